"""Offload: models that do not fit the GPU (layers, FFNs, experts or neurons on the CPU; weight streaming).

``perfcast.offload.plans.predict_offload`` costs one plan, ``perfcast.offload.search.search`` picks the
fastest placement that fits; the CPU model is ``perfcast.offload.cpu`` (catalog) and
``perfcast.offload.cpu_profile`` (measured by ``perfcast calibrate-cpu``). See docs/offload.md.
"""
