"""The pretraining loop (paper section 3.2 / 4.1) on Accelerate.

One step: both augmented views through the frozen backbone, residuals against each
sample's K references (cached backbone tokens), the projectors on both views, the angle-
and norm-oriented losses per layer (Eq. 7), Adam on the projectors only. Accelerate
handles devices, DDP, bf16 autocast (fp32 master weights), gradient accumulation and
trackers; nothing here is multi-process specific. Randomness comes from ``args.seed`` only
(``seeding.py``); checkpoints are safetensors + JSON written atomically (``checkpointing.py``),
so a resumed run continues the uninterrupted run's loss curve exactly (on CPU).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from adpretrain_hf.data.patch_labels import training_patch_labels
from adpretrain_hf.hub_publishing import METRICS_FILE
from adpretrain_hf.losses import ADPretrainLoss, CenterEstimator, RunningCenter
from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for

from .arguments import PretrainArguments, tracker_names
from .checkpointing import (
    CHECKPOINT_DIR, CheckpointError, check_safe, clean_temporaries, latest_checkpoint, load_checkpoint, save_checkpoint,
)
from .center import center_pass_batches, normal_rows, release_centers
from .data_pipeline import TrainingData, build_training_data, collate_views, draw_references
from .reference_token_cache import ReferenceTokenCache
from .seeding import seed_everything, worker_init
from .telemetry import PhaseStopRule, phase_counts, phase_record, progress_summary

MODEL_DIR = "model"  # the final save_pretrained folder, owned whole by save_pretrained
LOGS_DIR = "logs"


class ProjectorHead(nn.Module):
    """``model.project`` as a module of its own, so Accelerate/DDP wrap only the projectors.

    Why it exists: DDP must wrap a module whose forward produces the gradients it all-reduces;
    wrapping the whole model would put the frozen backbone (most of the parameters) into DDP's
    buckets and broadcasts. It re-implements nothing: its forward *is* ``model.project``, kept as a
    plain callable attribute (a bound method is not a module, so the backbone is not registered).
    """

    def __init__(self, model: ADPretrainModel) -> None:
        super().__init__()
        self.projectors = model.projectors  # the only registered submodule: DDP and the optimizer see these
        self.project = model.project

    def forward(self, residuals: list[torch.Tensor], banks: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
        """Per layer ``[B, N_l, C_l]`` residuals -> projected features (``banks``: ``cross_attn`` only)."""
        return self.project(residuals, banks)


class TrainingState:
    """Counters and centers saved with every checkpoint (``checkpointing.save_checkpoint``)."""

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.centers: list[torch.Tensor] = []
        self.initial_centers: list[torch.Tensor] = []  # as estimated before step 1


def check_finite(loss: torch.Tensor, step: int, norm_kind: str) -> None:
    """Stop with a diagnosis instead of training on NaN/inf."""
    if bool(torch.isfinite(loss)):
        return
    hint = (
        "with norm_kind='paper' the norm loss weight exp(n - r) overflows float32 once a feature's norm exceeds ~89: "
        "use --set model.norm_kind=release (the authors' sqrt(||x||+1)-1), or a lower learning rate"
        if norm_kind == "paper"
        else "lower the learning rate or check the data (NaN pixels, empty masks)"
    )
    raise FloatingPointError(f"the pretraining loss is {loss.item()} at step {step}: {hint}")


def build_model(args: PretrainArguments) -> ADPretrainModel:
    """The preset's model with config overrides; real backbone weights when asked."""
    config = ADPretrainConfig.from_preset(args.preset, **args.model)
    model = ADPretrainModel(config)
    if args.backbone_weights:
        model.load_backbone_weights(None if args.backbone_weights == "auto" else args.backbone_weights)
    return model


def _mixed_precision(args: PretrainArguments) -> str:
    if args.mixed_precision != "auto":
        return args.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` (those of a checkpoint being resumed; none for a new run)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(line + "\n" for line in kept))
    temp.replace(path)


class Pretrainer:
    """Builds everything from :class:`PretrainArguments` and runs :meth:`train`."""

    def __init__(self, args: PretrainArguments, model: Optional[ADPretrainModel] = None) -> None:
        self.args = args.validate()
        self.output_dir = Path(args.output_dir)
        self.resume_from = self._resume_folder()
        self.accelerator = Accelerator(
            mixed_precision=_mixed_precision(args),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=tracker_names(args.report_to),
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / LOGS_DIR)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        seed_everything(args.seed)
        self.model = model if model is not None else build_model(args)
        self.config = self.model.config
        self.model.backbone.to(self.accelerator.device)
        self.processor = processor_for(self.model)
        self.data: TrainingData = build_training_data(args.data_root, self.processor, args.categories, seed=args.seed)
        loader = DataLoader(
            self.data.dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
            collate_fn=collate_views, drop_last=False, worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(args.seed),
        )
        self.head = ProjectorHead(self.model)
        optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
        self.head, self.optimizer, self.loader = self.accelerator.prepare(self.head, optimizer, loader)
        # Epoch-based schedule: stepped once per epoch, so not wrapped by Accelerate.
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(args.lr_milestones), gamma=args.lr_gamma)
        self.state = TrainingState()
        self.running: Optional[RunningCenter] = None
        self.cache = ReferenceTokenCache(
            self.model.backbone_features, self.data.reference_pixels, self.accelerator.device, max_images=args.feature_cache_images,
            rows=self.data.reference_rows(),  # fixed backbone groups: a row's tokens do not depend on history
        )
        # Every loss option is a config field (--set model.<field>=...), built in one place.
        self.loss_fn = ADPretrainLoss.from_config(self.config, max_block_elements=args.loss_chunk_elements)
        self.rng = np.random.default_rng(args.seed + self.accelerator.process_index)
        self.grids = self.model.grid_sizes

    # -- one batch --------------------------------------------------------------
    @torch.no_grad()
    def _residuals(self, batch: dict[str, Any]) -> tuple[list, list, list, list, list]:
        """Backbone on both views, residuals against each sample's references, patch labels.

        The model's public steps: ``backbone_features`` (under autocast) and ``residuals``
        (the model's metric and matcher backend; identity without residual matching).
        Returns ``(res1, res2, angle_labels, norm_labels, banks)``; the two label lists follow
        ``config.patch_label_rule`` (one tensor twice with ``"fraction"``).
        """
        device = self.accelerator.device
        banks = list(self.cache.banks(draw_references(self.data, batch, self.rng, self.config.training_reference_shots)).layers)
        size = len(batch["view1"])
        with self.accelerator.autocast():
            # One backbone pass over both views (2B images) instead of two half-size passes.
            both = self.model.backbone_features(torch.cat([batch["view1"], batch["view2"]]).to(device))
        res1, res2 = (self.model.residuals(view, banks) for view in ([t[:size] for t in both], [t[size:] for t in both]))
        angle_labels, norm_labels = self.patch_labels(batch["mask"].to(device))
        return res1, res2, angle_labels, norm_labels, banks

    def patch_labels(self, masks: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``[B, H, W]`` masks -> per layer ``[B, N_l]`` angle-term and norm-term labels (True = anomalous)."""
        config = self.config
        pairs = [
            training_patch_labels(masks, grid, config.patch_label_rule, min_pixels=config.angle_label_min_pixels,
                                  fraction=config.patch_anomaly_fraction)
            for grid in self.grids
        ]
        return [a for a, _ in pairs], [n for _, n in pairs]

    def estimate_centers(self) -> list[torch.Tensor]:
        """Center c before training (no gradient), as ``config.center_estimation`` says.

        ``"release"``: one pass over every normal training image, un-augmented,
        ``config.center_reference_shots`` references each (``training/center.py``).
        ``"batches"``: the normal patches (angle-term labels) of the first ``center_batches``
        augmented training batches, each with the per-batch random K.
        """
        project = None if self.config.center_mode == "residual" else self.head
        if self.config.center_estimation == "release":
            shots = self.config.center_reference_shots
            sampler = self.data.sampler
            raw = self.data.raw
            rows = normal_rows(raw["label"])[self.accelerator.process_index :: self.accelerator.num_processes]
            categories, views = raw["category"], raw["view"]
            batches = center_pass_batches(
                rows, self.data.reference_pixels, self.model.backbone_features, self.cache.banks,
                lambda row, rng: sampler.sample(categories[row], views[row], shots, rng, exclude=row),
                self.rng, self.accelerator.device, progress=self.args.progress and self.accelerator.is_local_main_process,
            )
            centers = release_centers(batches, self.model.residuals, project)
        else:
            estimator = CenterEstimator(len(self.grids))
            for i, batch in enumerate(self.loader):
                if i >= self.args.center_batches:
                    break
                res1, _, labels, _, banks = self._residuals(batch)
                with torch.no_grad(), self.accelerator.autocast():
                    feats = res1 if project is None else project(res1, banks)
                estimator.update([f.float() for f in feats], labels)  # True = anomalous, excluded
            centers = estimator.compute()
        centers = [c.to(self.accelerator.device) for c in centers]
        return [self.accelerator.reduce(c, reduction="mean") for c in centers]

    def _reduced_terms(self, out: Any) -> tuple[float, list[float], list[float]]:
        """Loss, per-layer angle and norm terms, each the mean over processes (one all-reduce)."""
        terms = torch.stack([out.loss.detach().float(), *(torch.as_tensor(v).detach().float().to(out.loss.device) for v in [*out.angle, *out.norm])])
        terms = self.accelerator.reduce(terms, reduction="mean").tolist()
        layers = len(out.angle)
        return terms[0], terms[1 : 1 + layers], terms[1 + layers :]

    def _phase(self, feats1: list, feats2: list, norm_labels: list, angle: list[float], out: Any) -> dict[str, Any]:
        """Phase telemetry of the step (``training/telemetry.py``), counts summed over processes."""
        counts = phase_counts([feats1, feats2], norm_labels, self.loss_fn)
        counts = self.accelerator.reduce(counts, reduction="sum")
        norms = torch.stack([a + b for a, b in out.norm_views]).float()
        norms = self.accelerator.reduce(norms.to(counts.device), reduction="mean").tolist()
        return phase_record(counts, angle, norms)

    def _resume_folder(self) -> Optional[Path]:
        """The checkpoint named by ``--resume``, checked (no pickle) before anything is built."""
        if not self.args.resume:
            return None
        root = self.output_dir / CHECKPOINT_DIR
        checkpoint = latest_checkpoint(root) if self.args.resume == "latest" else Path(self.args.resume)
        if checkpoint is None:
            raise CheckpointError(f"nothing to resume from: no checkpoint under {root} (run without --resume to start)")
        check_safe(checkpoint)
        return checkpoint

    def _resume(self) -> dict[str, list[torch.Tensor]]:
        """Load the ``--resume`` checkpoint; metrics of later steps are dropped."""
        running_state = load_checkpoint(self, self.resume_from)
        if self.accelerator.is_main_process:
            _truncate_metrics(self.output_dir / METRICS_FILE, self.state.step)
        return running_state

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    # -- the run --------------------------------------------------------------------
    def train(self) -> Path:
        args, acc = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        running_state = self._resume() if args.resume else {}
        if acc.is_main_process:
            clean_temporaries(self.output_dir / CHECKPOINT_DIR)
            if not args.resume:
                _truncate_metrics(self.output_dir / METRICS_FILE, 0)  # a new run starts a new curve
        acc.init_trackers("adpretrain", config={k: str(v) for k, v in args.to_dict().items()})
        if not self.state.centers:
            self.state.centers = self.estimate_centers()
            self.state.initial_centers = list(self.state.centers)
        running = None
        if self.config.center_mode == "projected":
            # A resumed estimate continues exactly as it was: it started from the pre-training centers.
            initial = self.state.initial_centers if running_state else self.state.centers
            running = RunningCenter(momentum=args.center_momentum, initial=initial)
            if running_state:
                running.load_state_dict(running_state)
            self.running = running
        steps_per_epoch = math.ceil(len(self.loader) / args.gradient_accumulation_steps)
        total_steps = args.max_steps or steps_per_epoch * args.epochs
        stop_rule = PhaseStopRule(args.stop_normal_inside_share, args.stop_patience) if args.stop_normal_inside_share else None
        stopped = False
        bar = tqdm(total=total_steps, initial=self.state.step, disable=not (args.progress and acc.is_local_main_process), desc="pretrain")
        self.head.train()
        while self.state.step < total_steps and self.state.epoch < args.epochs and not stopped:
            self.loader.set_epoch(self.state.epoch)
            self.data.set_epoch(self.state.epoch)
            loader = acc.skip_first_batches(self.loader, self.state.batch_in_epoch) if self.state.batch_in_epoch else self.loader
            for batch in loader:
                self.state.batch_in_epoch += 1
                if args.skip_normal_only_batches and not bool(batch["mask"].any()):
                    continue
                started = time.perf_counter()
                res1, res2, labels, norm_labels, banks = self._residuals(batch)
                with acc.accumulate(self.head):
                    with acc.autocast():
                        feats1, feats2 = self.head(res1, banks), self.head(res2, banks)
                    centers = [c.to(f.device) for c, f in zip(self.state.centers, feats1)]
                    out = self.loss_fn([f.float() for f in feats1], [f.float() for f in feats2], labels, centers, norm_labels)
                    check_finite(out.loss, self.state.step + 1, self.config.norm_kind)
                    acc.backward(out.loss)
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if running is not None:
                    running.update([f.detach().float() for f in feats1], labels)  # True = anomalous, excluded
                    self.state.centers = running.compute()
                if not acc.sync_gradients:
                    continue
                self.state.step += 1
                bar.update(1)
                loss, angle, norm = self._reduced_terms(out)
                phase = self._phase(feats1, feats2, norm_labels, angle, out)
                bar.set_postfix(loss=f"{loss:.4f}", **progress_summary(phase))
                record = {
                    "step": self.state.step, "epoch": self.state.epoch, "loss": loss,
                    "lr": self.optimizer.param_groups[0]["lr"], "k_references": banks[0].shape[1] // res1[0].shape[1],
                    "samples_per_s": batch["view1"].shape[0] / max(1e-9, time.perf_counter() - started),
                    "anomalous_patch_fraction": float(torch.stack([l.float().mean() for l in labels]).mean()),
                    **{f"angle/layer_{i}": v for i, v in enumerate(angle)},
                    **{f"norm/layer_{i}": v for i, v in enumerate(norm)},
                    **{f"cache/{k}": v for k, v in self.cache.stats().items()},
                    **phase,
                }
                stopped = stop_rule is not None and stop_rule.update(phase)
                if stopped:
                    record["stopped_by"] = "stop_normal_inside_share"
                    bar.write(f"stopping at step {self.state.step}: >= {args.stop_normal_inside_share:.0%} of the normal "
                              f"patches inside r at every layer for {args.stop_patience} logged steps (our rule, not the paper's)")
                self._write_metrics(record)
                if args.checkpoint_every_steps and self.state.step % args.checkpoint_every_steps == 0:
                    save_checkpoint(self, args.checkpoints_total_limit)
                if self.state.step >= total_steps or stopped:
                    break
            else:  # epoch finished
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.scheduler.step()
                if not args.checkpoint_every_steps:
                    save_checkpoint(self, args.checkpoints_total_limit)
        bar.close()
        acc.wait_for_everyone()
        if args.checkpoint_every_steps is None and self.state.batch_in_epoch:
            save_checkpoint(self, args.checkpoints_total_limit)  # stopped mid-epoch by max_steps: keep a resumable state
        return self.finish()

    def finish(self) -> Path:
        """Write the ``save_pretrained`` checkpoint (+ model card) into ``output_dir/model`` and optionally push it.

        The model has a folder of its own: ``save_pretrained`` may replace its target folder
        whole, which must not take ``logs/``, ``checkpoints/`` or ``metrics.jsonl`` with it.
        """
        acc = self.accelerator
        model_dir = self.output_dir / MODEL_DIR
        self.model.centers.set([c.to(self.model.centers.get()[0].device) for c in self.state.centers])
        if acc.is_main_process:
            self.model.save_pretrained(model_dir)
            from adpretrain_hf.hub_publishing import write_model_card

            write_model_card(
                model_dir, repo_id=self.args.hub_model_id or self.output_dir.resolve().name,
                training_args={**self.args.to_dict(), "backbone_weights": loaded_backbone_weights(self.model, self.args)},
                metrics_file=self.output_dir / METRICS_FILE,
            )
            if self.args.push_to_hub:
                from adpretrain_hf.hub_publishing import push_checkpoint

                push_checkpoint(model_dir, self.args.hub_model_id)
            print(f"checkpoint written: {model_dir}", flush=True)
        acc.wait_for_everyone()
        acc.end_training()
        return model_dir


def loaded_backbone_weights(model: ADPretrainModel, args: PretrainArguments) -> Optional[str]:
    """The backbone weights the model actually holds: those loaded into it (also before a ``model=`` was
    handed to the loop), else ``args.backbone_weights``; None: random."""
    return getattr(model, "loaded_backbone_weights", None) or args.backbone_weights


def run_pretraining(args: PretrainArguments, model: Optional[ADPretrainModel] = None) -> Path:
    """Train the projectors and return the model folder ``output_dir/model`` (a ``save_pretrained`` checkpoint)."""
    return Pretrainer(args, model).train()
