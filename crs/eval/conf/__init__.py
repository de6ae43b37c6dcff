"""Config options only ``crs eval`` reads (``suite=…``), kept out of ``conf/``, whose groups are ``crs train``'s
(on the search path through ``conf/eval.yaml``'s ``hydra.searchpath``)."""
