"""The algorithm contract: one definition serves the simulator, the all-gather
transport and the DDP comm hook (DESIGN.md, "the data path").

A step of data-parallel training with compression is three phases, and only the
middle one communicates::

    payload   = alg.worker_step(state, grad, step=k, rank=i, stream=b)   # compute only
    gathered  = transport.all_gather(payload)                           # [n, P] uint8, bytes only
    direction = alg.aggregate(state, gathered, step=k, stream=b)         # compute only

``direction`` is dense fp32 and is what a plain SGD step applies: ``x <- x - lr * direction``
(for EF14, whose memory holds ``gamma * grad``, ``direction = mean(Delta_i) / gamma``; for DORE,
``direction = -beta * q_hat / lr`` so the model follows ``x_hat <- x_hat + beta * q_hat``).
``aggregate`` never issues a collective: every rank computes the same direction from the same
gathered bytes, so server-side state (EF21's ``g``, DORE's ``x``, ``h``, ``e``) is replicated on
each rank. For a real server topology, ``aggregate`` splits into
``down = alg.server_step(state, gathered, ...)`` on the server (a packed downlink payload) and
``direction = alg.apply_downlink(state, down, ...)`` on every rank.

``state`` is a flat ``dict[str, Tensor]`` of fp32 tensors plus ints, made by
``alg.init_state(numel, device, world_size=n, rank=i)``: picklable, checkpointable, and
the same on every rank wherever the algorithm says so. Seeds for stochastic compressors
derive from ``(alg.seed, step, rank, stream)`` by :meth:`Algorithm.seed_for`, so every rank
can regenerate every other rank's randomness (Random-K indices) without sending it.
"""
