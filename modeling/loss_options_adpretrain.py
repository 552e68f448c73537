"""``LossOptions``: the pretraining loss's options, ONE frozen dataclass that both
``ADPretrainConfig`` (its loss fields, saved in config.json under these names) and
``adpretrain_hf.losses.ADPretrainLoss`` read. One name per option, defaults and validation here.

The defaults are the authors' release form (``RELEASE_LOSS_FORM``), checked equal to the released
code's outputs in ``tests/release_parity/``: the paper's form (``PAPER_LOSS_FORM``) overflows
float32 within a few steps on real backbone features (docs/loss_curves/README.md).

Part of the remote-code bundle: imports only the standard library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

# -- The numbers of the paper (appendix E) --------------------------------------------------
TEMPERATURE = 0.15
"""tau of the angle-oriented loss, Eq. (2) (appendix E, Tab. 8)."""
HYPERSPHERE_RADIUS = 0.4
"""r of the norm-oriented loss, Eqs. (3)-(5) (sqrt(1 + 1) - 1 ~= 0.41: the unit sphere under the paper's norm)."""
ABNORMAL_MARGIN = 0.75
"""Delta r: abnormal features are pushed beyond r + Delta r, Eq. (5) (appendix E, Tab. 9)."""
LOSS_WEIGHT = 1.0
"""lambda weighting the angle loss in Eq. (7) (Tab. 10)."""
NORM_LOSS_WEIGHT = 1.0
"""Weight of the norm loss: 0 trains the angle loss alone (Table 2, ExpID 2.5)."""

# -- The choices of the loss form -----------------------------------------------------------
NORM_KINDS = ("paper", "release")
"""``"paper"`` sqrt(||x||^2 + 1) - 1 | ``"release"`` sqrt(||x|| + 1) - 1."""
ANGLE_ANCHORS = ("first", "both")
"""``"first"`` (Eq. 7, view-1 anchors) | ``"both"`` views (release)."""
LOSS_NORMALIZATIONS = ("paper", "release")
"""How the per-layer terms combine: Eq. (7)'s 1/2N average | the release's plain sum."""
NORM_LOSS_REDUCTIONS = ("subset", "all")
"""How the norm loss averages its three parts (normals outside r, normals below 0.99 r, anomalous
below r + Delta r): ``"subset"`` each part over its OWN active patches, the part averages added
(the release, ``losses/norm_loss.py``); ``"all"`` every part divided by all N patches of the view
(Eq. 7's 1/2N, the package's earlier behaviour)."""

PAPER_LOSS_FORM: dict[str, Any] = {
    "norm_kind": "paper",
    "angle_anchors": "first",
    "loss_normalization": "paper",
    "detach_exp_factor": False,
    "adaptive_radius": False,
    "hinge_normals": False,
    "push_inner_normals": False,
    "center_mode": "projected",
    "norm_loss_reduction": "all",
    "patch_label_rule": "fraction",
    "center_estimation": "batches",
}
"""The loss exactly as the paper writes it (Eqs. 2-7, Sec. 3.2): ``training/configs/paper.yaml``
(config fields: the loss options that differ from the release's, and how the training loop labels
patches and estimates the center). The paper does not say how patch labels or the center are
obtained: there ``fraction`` and ``batches`` are our choices."""

RELEASE_LOSS_FORM: dict[str, Any] = {
    "norm_kind": "release",
    "angle_anchors": "both",
    "loss_normalization": "release",
    "detach_exp_factor": True,
    "adaptive_radius": True,
    "hinge_normals": True,
    "push_inner_normals": True,
    "center_mode": "residual",
    "norm_loss_reduction": "subset",
    "patch_label_rule": "release",
    "center_estimation": "release",
}
"""The loss as the authors' released code computes it: ``training/configs/release.yaml``."""

DEFAULT_LOSS_FORM: dict[str, Any] = RELEASE_LOSS_FORM
"""The form ``ADPretrainConfig()`` and ``LossOptions()`` use by default: the release's."""

_CHOICES = {
    "norm_kind": NORM_KINDS,
    "angle_anchors": ANGLE_ANCHORS,
    "loss_normalization": LOSS_NORMALIZATIONS,
    "norm_loss_reduction": NORM_LOSS_REDUCTIONS,
}


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: pass one of {', '.join(map(repr, choices))}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` if it is a finite number > 0 (>= 0 with ``allow_zero``), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (value == 0.0 and not allow_zero):
        raise ValueError(f"{name}={value} is invalid: pass a finite number {'>= 0' if allow_zero else '> 0'}")
    return value


@dataclass(frozen=True)
class LossOptions:
    """The options of ADPretrain's pretraining loss (Eq. 7 and the release's variants).

    Each is an ``ADPretrainConfig`` field of the same name (``config.loss_options()``); build the
    loss with ``ADPretrainLoss(options)`` or ``ADPretrainLoss.from_config(config)``.

    Attributes:
        angle_temperature: tau of the angle-oriented loss, Eq. (2) (0.15). (Not ``temperature``:
            transformers reserves that name for generation.)
        hypersphere_radius: r of the norm-oriented loss (0.4).
        abnormal_margin: Delta r; abnormal features are pushed beyond r + Delta r (0.75).
        loss_weight: lambda weighting the angle loss in Eq. 7 (1.0); 0 trains the norm loss alone
            (the paper's Table 2 ablation, ExpID 2.6).
        norm_loss_weight: weight of the norm loss (1.0, as in Eq. 7); 0 trains the angle loss alone
            (Table 2, ExpID 2.5).
        norm_kind: ``"paper"`` sqrt(||x||^2+1)-1 or ``"release"`` sqrt(||x||+1)-1.
        angle_anchors: ``"first"`` (paper Eq. 7) or ``"both"`` views as anchors (release).
        loss_normalization: ``"paper"`` (Eq. 7's 1/2N average over both views) or ``"release"``
            (plain sum of the angle mean and the two views' norm means).
        detach_exp_factor: the norm loss's exp(.) weight is a constant in backward (release).
        adaptive_radius: cap r at 0.9 x the smallest anomalous norm of the batch, per view (release).
        hinge_normals: no contraction loss for normal features already inside r (release).
        push_inner_normals: push normal features below 0.99 r outward, onto [0.99 r, r] (release).
        norm_loss_reduction: ``"subset"`` (release: each active part of the norm loss averaged
            over its own patches) or ``"all"`` (every part divided by all patches); see
            ``NORM_LOSS_REDUCTIONS``.
    """

    angle_temperature: float = TEMPERATURE
    hypersphere_radius: float = HYPERSPHERE_RADIUS
    abnormal_margin: float = ABNORMAL_MARGIN
    loss_weight: float = LOSS_WEIGHT
    norm_loss_weight: float = NORM_LOSS_WEIGHT
    norm_kind: str = DEFAULT_LOSS_FORM["norm_kind"]
    angle_anchors: str = DEFAULT_LOSS_FORM["angle_anchors"]
    loss_normalization: str = DEFAULT_LOSS_FORM["loss_normalization"]
    detach_exp_factor: bool = DEFAULT_LOSS_FORM["detach_exp_factor"]
    adaptive_radius: bool = DEFAULT_LOSS_FORM["adaptive_radius"]
    hinge_normals: bool = DEFAULT_LOSS_FORM["hinge_normals"]
    push_inner_normals: bool = DEFAULT_LOSS_FORM["push_inner_normals"]
    norm_loss_reduction: str = DEFAULT_LOSS_FORM["norm_loss_reduction"]

    def __post_init__(self) -> None:
        """Validate (one line per error, naming the field and the fix). Numbers are kept as given
        (config.json, and the config hash of results files, stay as written); switches become bools."""
        check_positive("angle_temperature", self.angle_temperature)
        check_positive("hypersphere_radius", self.hypersphere_radius)
        check_positive("abnormal_margin", self.abnormal_margin, allow_zero=True)
        angle_weight = check_positive("loss_weight", self.loss_weight, allow_zero=True)
        norm_weight = check_positive("norm_loss_weight", self.norm_loss_weight, allow_zero=True)
        if angle_weight == 0 and norm_weight == 0:
            raise ValueError("loss_weight and norm_loss_weight are both 0: nothing would be trained; keep at least one > 0")
        for name, allowed in _CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("detach_exp_factor", "adaptive_radius", "hinge_normals", "push_inner_normals"):
            object.__setattr__(self, name, bool(getattr(self, name)))  # frozen: normalised once, here

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, which are also the config's loss fields and config.json's keys."""
        return tuple(field.name for field in fields(cls))

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> "LossOptions":
        """Options from the entries of ``values`` that are option names (others, such as
        ``center_mode`` in a loss form, are not loss options and are ignored); the rest default."""
        return cls(**{name: values[name] for name in cls.names() if name in values})


PAPER_LOSS_OPTIONS = LossOptions.pick(PAPER_LOSS_FORM)
"""The paper's Eqs. (2)-(7) as written."""
RELEASE_LOSS_OPTIONS = LossOptions.pick(RELEASE_LOSS_FORM)
"""The released code's loss (``tests/release_parity/test_losses.py``); equal to ``LossOptions()``."""
