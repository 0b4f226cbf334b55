"""Lightning: ``GradpackDDPStrategy`` on CPU (gloo), 2 ranks; resume from a Lightning
checkpoint is bit-identical to the uninterrupted run, and a default ``torch.load`` reads the
checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from tests.ddp_support import (
    BUCKET_CAP_MB,
    algorithm,
    dataset,
    flat,
    net,
    require,
    run_workers,
    torchrun_env,
    values,
)

pytestmark = pytest.mark.distributed

EPOCHS, STEPS_PER_EPOCH = 2, 3


def _fit(rank, n, root):
    torchrun_env(rank, n)
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from gradpack.integrations.lightning import CHECKPOINT_KEY, GradpackDDPStrategy

    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, _):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    x, y = dataset(n * 4 * STEPS_PER_EPOCH)
    data = DataLoader(TensorDataset(x, y), batch_size=4)

    def fit(epochs, ckpt_path=None, save_dir=None):
        strategy = GradpackDDPStrategy(algorithm(), bucket_cap_mb=BUCKET_CAP_MB)
        callbacks = []
        if save_dir is not None:
            callbacks.append(L.callbacks.ModelCheckpoint(dirpath=save_dir, save_top_k=-1,
                                                         every_n_epochs=1))
        trainer = L.Trainer(accelerator="cpu", devices=n, strategy=strategy,
                            max_epochs=epochs, callbacks=callbacks, logger=False,
                            enable_checkpointing=save_dir is not None,
                            enable_progress_bar=False, enable_model_summary=False)
        model = Regression()
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return flat(model), strategy.gradpack_state

    uninterrupted, state = fit(EPOCHS, save_dir=root)
    ckpt = os.path.join(root, f"epoch={EPOCHS // 2 - 1}-step={EPOCHS // 2 * STEPS_PER_EPOCH}.ckpt")
    saved = torch.load(ckpt)[CHECKPOINT_KEY]  # default torch.load: weights_only=True
    resumed, state2 = fit(EPOCHS, ckpt_path=ckpt)
    without = os.path.join(root, "without-gradpack.ckpt")  # the same checkpoint, minus ours
    if rank == 0:
        full = torch.load(ckpt, weights_only=False)
        del full[CHECKPOINT_KEY]
        torch.save(full, without)
    torch.distributed.barrier()
    with pytest.warns(RuntimeWarning, match="holds no gradpack hook state"):
        resumed_without, _ = fit(EPOCHS, ckpt_path=without)
    return {"equal": torch.equal(uninterrupted, resumed), "steps": (state.step, state2.step),
            "without_equal": torch.equal(uninterrupted, resumed_without),
            "saved_step": saved["ranks"][rank]["step"] if rank == 0 else None,
            "units": len(state.units.units),
            "compressed": int(state.ledger.totals()["bytes_up"][rank])}


def test_lightning_strategy_compresses_on_cpu_and_resumes_bit_identically(tmp_path):
    require("lightning")
    results = values(run_workers(_fit, 2, tmp_path, str(tmp_path), timeout_s=60))
    for rank, res in enumerate(results):
        assert res["equal"], rank
        assert not res["without_equal"], rank  # the check can fail
        assert res["steps"] == (EPOCHS * STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH)
        assert res["units"] >= 2  # several buckets, compressed through the rebuild
        assert res["compressed"] > 0
    assert results[0]["saved_step"] == EPOCHS // 2 * STEPS_PER_EPOCH
