"""The host operators under the losses and the miners: what runs outside MXNet's graph, on the
host, in compiled numba kernels, and the index conversions both use.

- :mod:`.distance`: the losses' F-op view of :mod:`dml.distances`; :mod:`.checks`: the parameter
  checks the losses and the miners share;
- :mod:`.indices`: tuple conversions (pairs, triplets) and the tuple graph;
- :mod:`.kernels`, :mod:`.mining`: the mining kernels and the same selections as numpy functions;
- :mod:`.batch`: the fused host operator of the pair and triplet losses (``dml_batch_loss``);
- :mod:`.simkernels`, :mod:`.simop`: the fused host operator of the similarity losses;
- :mod:`.references`: scoring a batch against reference embeddings (the cross-batch memory).

Nothing here imports a loss or a miner; :mod:`dml.losses` and :mod:`dml.miners` both import it.
The old paths (``dml.losses.batch``, ...) give the same modules.
"""
