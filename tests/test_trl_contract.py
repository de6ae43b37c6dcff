"""Fails loudly when a TRL upgrade changes the private methods crs's one subclass relies on.

crs overrides ``_calculate_rewards``, ``_generate_and_score_completions``, ``compute_loss``,
``_get_per_token_logps_and_entropies``, (``trainer.generation=static``, R³L) ``_generate_single_turn`` and
(R³L on environments) ``_generate``, and depends on the order of operations inside ``_compute_loss``.
If this file fails after upgrading trl, re-read crs/trainers/grpo.py against the new grpo_trainer.py
before relaxing anything here.

    pytest tests/test_trl_contract.py
"""

import inspect
import pkgutil

import trl
from packaging.version import Version
from trl import GRPOTrainer

import crs


def test_trl_version_is_the_pinned_minor():
    v = Version(trl.__version__)
    assert Version("1.16") <= v < Version("1.17"), f"crs was checked against trl 1.16.x, found {v}"


def _params(fn):
    return list(inspect.signature(fn).parameters)


def test_overridden_signatures():
    assert _params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert _params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert _params(GRPOTrainer.compute_loss)[:5] == [
        "self",
        "model",
        "inputs",
        "return_outputs",
        "num_items_in_batch",
    ]
    params = _params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert params[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"]
    assert "compute_entropy" in params


def test_compute_loss_order_of_operations():
    src = inspect.getsource(GRPOTrainer._compute_loss)
    # attention uses completion_mask only; the loss mask multiplies in tool_mask (crs's loss-only mask)
    assert "attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)" in src
    assert (
        'mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]'
        in src
    )
    # crs rewrites the advantages inside the logps/entropies call; TRL must read them afterwards
    i_fwd = src.index("self._get_per_token_logps_and_entropies(")
    assert "compute_entropy=True" in src[i_fwd : i_fwd + 400]
    i_adv = src.index('advantages = inputs["advantages"]')
    assert i_fwd < i_adv
    # [B,T] advantages are accepted as is
    assert "if advantages.dim() == 1:" in src
    # the dapo normaliser reads num_items_in_batch from the batch dict (crs rescales it)
    assert 'inputs["num_items_in_batch"]' in src
    # GSPO's sequence ratio is a mean over the loss mask (so TP's mask applies to it)
    assert "(log_ratio * mask).sum(-1) / mask.sum(-1)" in src


def test_generation_contract():
    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)" in src
    assert "process_slice = slice(" in src
    for key in ('"completion_mask"', '"advantages"', '"num_items_in_batch"', '"completion_ids"'):
        assert key in src
    prep = inspect.getsource(GRPOTrainer._prepare_inputs)
    assert "shuffle_sequence_dict(generation_batch)" in prep  # rows are shuffled: crs adds features before


def test_exactly_one_grpo_subclass_in_crs():
    import importlib

    subclasses = []
    for mod in pkgutil.walk_packages(crs.__path__, "crs."):
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, GRPOTrainer) and obj is not GRPOTrainer and obj.__module__ == mod.name:
                subclasses.append(f"{mod.name}.{obj.__name__}")
    assert subclasses == ["crs.trainers.grpo.CreditGRPOTrainer"]


def test_single_turn_generation_contract():
    """crs.rollout.static replaces the regular ``generate`` branch of ``_generate_single_turn``: same
    signature, same unwrap context, and the same cut after the first EOS (copied there)."""
    assert _params(GRPOTrainer._generate_single_turn) == [
        "self",
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
        "has_tool_images",
    ]
    src = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "return completion_ids, logprobs" in src
    assert "generation_kwargs=self.generation_kwargs" in src
    assert "generation_config=self.generation_config" in src
    assert "completion_mask = (sequence_indices <= eos_idx.unsqueeze(1)).int()" in src
    assert 'padding_side="left"' in src
    # crs's decoder rebuilds the processors the way generate does
    from transformers import GenerationMixin

    assert "input_ids_seq_length" in _params(GenerationMixin._get_logits_processor)


def test_r3l_retry_generation_contract():
    """R³L (crs/methods/r3l/single_turn.py, crs/methods/r3l/episodes.py) wraps ``_generate`` and re-enters TRL's tool loop for
    retries: ``_generate``'s 8-tuple, ``_tool_call_loop``'s arguments and results, and the per-rollout
    tool state (``_sync_tool_dicts``/``_async_tool_dicts`` indexed by batch position, ``_env_tools``,
    ``_batch_environments``) it swaps and reads."""
    assert _params(GRPOTrainer._generate) == ["self", "prompts"]
    src = inspect.getsource(GRPOTrainer._generate)
    assert (
        "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images"
        in src
    )
    assert "completion_ids, logprobs = self._generate_single_turn(" in src
    assert "parse_response(self._tokenizer, ids, prefix=prompt_ids[i], tools=per_prompt_tools[i])" in src
    assert "per_prompt_tools = [self._env_tools[name] for name in self._batch_environments]" in src
    assert _params(GRPOTrainer._tool_call_loop) == [
        "self",
        "prompts",
        "prompt_ids",
        "completion_ids",
        "completions",
        "logprobs",
        "images",
        "multimodal_fields",
    ]
    loop = inspect.getsource(GRPOTrainer._tool_call_loop)
    assert "sync_tool_dict = self._sync_tool_dicts[idx_with_tool]" in loop
    assert "async_tool_dict = self._async_tool_dicts[idx_with_tool]" in loop
    gen = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert ") = self._generate(prompts)" in gen
    assert (
        'reset_kwargs = {k: v for k, v in x.items() if k != "environment"} if self._multi_environment else x'
        in gen
    )


def test_dpo_trainer_contract():
    """crs/trainers/dpo.py: the collator it extends, the columns it keeps, the loss it wraps (a forward hook keeps
    the policy's per-token log-probs of TRL's first call of ``model``) and the evaluation it replaces."""
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    assert _params(DataCollatorForPreference.torch_call) == ["self", "examples"]
    coll = inspect.getsource(DataCollatorForPreference.torch_call)
    assert 'chosen_mask = [[0] * len(example["prompt_ids"]) + [1] * len(example["chosen_ids"])' in coll
    assert "sl = slice(None, self.max_length)" in coll and "sl = slice(-self.max_length, None)" in coll
    assert 'padding_side="right"' in coll
    assert "input_ids = prompt_chosen_ids + prompt_rejected_ids" in coll  # rows [chosen; rejected]
    assert _params(DPOTrainer._set_signature_columns_if_needed) == ["self"]
    assert _params(DPOTrainer.compute_loss)[:5] == [
        "self",
        "model",
        "inputs",
        "return_outputs",
        "num_items_in_batch",
    ]
    assert _params(DPOTrainer.evaluate) == ["self", "eval_dataset", "ignore_keys", "metric_key_prefix"]
    src = inspect.getsource(DPOTrainer._compute_loss)
    i_policy = src.index("outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)")
    assert i_policy < src.index("ref_outputs = self.model(") < src.index("ref_outputs = self.ref_model(")
    assert "per_token_logps = outputs.log_probs[:, -seq_len:]" in src
    assert "shift_completion_mask = completion_mask[..., 1:]" in src
    assert (
        'ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]'
        in src
    )
    assert "per_sequence_loss = -F.logsigmoid(self.beta * delta_score)" in src
    assert '_non_model_keys = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}' in src
    log = inspect.getsource(DPOTrainer.log)
    assert 'mode = "train" if self.model.training else "eval"' in log
