"""Metrics: parameters, MACs, sparsity (:mod:`.counting`), the figures of a stage
(:mod:`.figures`), NetScore (:mod:`.netscore`), latency (:mod:`.latency`, :mod:`.deploy` for
ONNX Runtime, :mod:`.versus` for the dense reference against the final model), speedup
efficiency (:mod:`.efficiency`), single-layer latency tables (:mod:`.layer_latency`) and
``metrics.json`` (:mod:`.report`). Definitions are in each module's docstring. Import from the
modules: this package imports none of them, so that ``prune-report`` reads the figures' table
without torch."""
