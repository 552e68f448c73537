"""What one evaluation run is: every knob of the Table-1 runner in one checked dataclass.

Why a dataclass: the same settings drive the Python API, the CLI and the ``"config"`` block
of ``results.json``; checking them once, before any image is loaded, turns a typo in
``methods`` into an error in a second instead of after an hour of feature extraction.
Light on purpose (no torch or transformers at import: ``adpretrain evaluate --help`` builds its
flags from these fields); the checks import what they compare against.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ..metrics.names import METRIC_NAMES
from ..settings_values import suggest

DEFAULT_KINDS: tuple[str, ...] = ("backbone", "pretrained")
DEFAULT_FEATURE_CACHE_MB = 4096.0
"""Memory for cached features per category; past it they spill to safetensors files on disk."""
METRICS: tuple[str, ...] = METRIC_NAMES
"""The paper's I-AUROC, P-AUROC and PRO (``adpretrain_hf.metrics.METRIC_NAMES``)."""
DEFAULT_METHODS: tuple[str, ...] = ("featurenorm", "patchcore", "padim")
DEFAULT_SHOTS = 8
"""Normal reference images per query (section 4.1: "we match each input image with 8 reference samples")."""
REFERENCE_STRATEGY_CHOICES: tuple[str, ...] = ("first", "random", "kmeans", "aligned")
LAYOUT_CHOICES: tuple[str, ...] = ("auto", "mvtec", "mpdd", "mvtec3d", "btad", "visa", "realiad")
DTYPE_HELP = "model precision: float32, bfloat16 or float16 (or bf16, fp16, half), e.g. bfloat16 on a GPU (None: unchanged)"
DEFAULT_BOOTSTRAP_RESAMPLES = 1000
"""Test-image resamples per category for the paired intervals (a common choice for 95% percentile intervals; their Monte-Carlo error shrinks as 1/sqrt(B))."""
DEFAULT_BOOTSTRAP_CONFIDENCE = 0.95
NOISE_SETTING = "overlap"
"""SoftPatch's setting used by the paper (4.4): injected anomalies stay in the test set."""
PROTOCOL_CHOICES: tuple[str, ...] = ("release", "package")
"""Detector protocols (``evaluation.protocols.DETECTOR_PROTOCOLS``): the released code's variants, or the package's own."""
DEFAULT_PROTOCOL = "release"
"""The Table-1 runner's default: numbers comparable with the paper's (issue 19)."""

if TYPE_CHECKING:
    import torch


def parse_dtype(value: Union[None, str, "torch.dtype"]) -> Optional["torch.dtype"]:
    """``None`` / a ``torch.dtype`` / a name such as ``"bf16"`` -> ``torch.dtype`` or ``None``
    (``modeling.dtypes_adpretrain.DTYPES``: the accepted names)."""
    from ..modeling.dtypes_adpretrain import dtype_from_name

    return dtype_from_name(value)


def _check_fraction(name: str, value: float, low_open: bool, high_closed: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    low_ok = value > 0.0 if low_open else value >= 0.0
    high_ok = value <= 1.0 if high_closed else value < 1.0
    if not (low_ok and high_ok):
        interval = ("(0" if low_open else "[0") + (", 1]" if high_closed else ", 1)")
        raise ValueError(f"{name}={value} is outside {interval}: pass e.g. 0.1")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")


def _names(value: Union[None, str, Sequence[str]], what: str) -> Optional[tuple[str, ...]]:
    """``"a,b"`` / ``["a", "b"]`` -> ``("a", "b")``; ``None`` stays ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{what} must be names (str), got {items!r}")
    names = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not names:
        raise ValueError(f"{what} is empty: pass at least one name")
    return names


@dataclass
class EvaluationConfig:
    """Settings of :func:`~adpretrain_hf.evaluation.evaluate_model`: the one list of them.

    Each field's ``metadata`` holds its help text (and choices / flag aliases): ``adpretrain
    evaluate`` derives its flags from them with ``HfArgumentParser``, and ``--config FILE``
    reads the same names from YAML or JSON.
    """

    data_root: str = field(metadata={"help": "dataset folder holding the categories", "aliases": ["--data"], "metavar": "ROOT"})
    layout: str = field(default="auto", metadata={"help": "how the dataset folder is organised (auto: detected)", "choices": LAYOUT_CHOICES})
    categories: Optional[tuple[str, ...]] = field(
        default=None, metadata={"help": "categories to evaluate, comma-separated (None: all found)", "metavar": "A,B"})
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={
        "help": "detectors, comma-separated: featurenorm, patchcore, padim, cflow, glass, uniad "
                "(adpretrain_hf.detectors.DETECTORS)", "metavar": "M1,M2"})
    protocol: str = field(default=DEFAULT_PROTOCOL, metadata={
        "help": "detector protocol: release (the released code's PatchCore/PaDiM/FeatureNorm maths and PaDiM's "
                "global min-max step; comparable with the paper) or package (the package's own variants); "
                "docs/EVALUATION.md lists what each fixes", "choices": PROTOCOL_CHOICES})
    shots: int = field(default=DEFAULT_SHOTS, metadata={
        "help": "normal reference images per query (the paper's 8; the pool size when smaller)"})
    compare_backbone: bool = field(default=True, metadata={
        "help": "also run each method on the backbone's own features, the w/o column (ignored when kinds is set)"})
    kinds: Optional[tuple[str, ...]] = field(default=None, metadata={
        "help": "feature kinds to evaluate: backbone (w/o), residual (no projector, Table 2), pretrained (w/); "
                "None: backbone,pretrained, or pretrained alone without compare_backbone", "metavar": "K1,K2"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": "where results.json/csv/md, overlays and comparison.png go (None: nothing written)",
        "aliases": ["--output"], "metavar": "DIR"})
    reference_strategy: str = field(default="first", metadata={
        "help": "how references are chosen from the normal training images (appendix C)", "choices": REFERENCE_STRATEGY_CHOICES})
    reference_seed: int = field(default=0, metadata={"help": "seed of the first reference set (random / KMeans draws)"})
    train_fraction: float = field(default=1.0, metadata={
        "help": "share of normal training images used (Table 3a: 0.1)", "metavar": "F"})
    noise_ratio: float = field(default=0.0, metadata={
        "help": "SoftPatch overlap noise: int(R x normal training images) anomalous test images join training, "
                "kept in test (Table 3b: 0.1)", "metavar": "R"})
    train_shots: Optional[int] = field(default=None, metadata={
        "help": "few-shot: exactly N normal training images (Table 5: 2 or 4)", "metavar": "N"})
    reference_seeds: int = field(default=1, metadata={
        "help": "number of reference sets, mean and std over them (Table 4: 3; 'first' becomes 'random')", "metavar": "N"})
    quick: bool = field(default=False, metadata={
        "help": "trained methods (cflow, glass, uniad) run their few-epoch smoke preset (never for reported numbers)"})
    realiad_fit_fraction: float = field(default=0.5, metadata={"help": "Real-IAD: share of OK samples the detectors fit on"})
    split_seed: int = field(default=0, metadata={"help": "seeds the Real-IAD split and the protocol draws"})
    device: Optional[str] = field(default=None, metadata={"help": "where the model runs, e.g. cuda:0 (None: where it is)"})
    dtype: Optional[str] = field(default=None, metadata={"help": DTYPE_HELP, "metavar": "NAME"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass (and per file-reading chunk)"})
    num_overlays: int = field(default=4, metadata={"help": "overlay PNGs per category"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm bar over categories and one per category"})
    print_markdown: bool = field(default=True, metadata={"help": "print the markdown table on stdout"})
    aligned_feature_net: Optional[Any] = field(default=None, metadata={
        "help": "early-stage CNN of the 'aligned' matcher: a ResNet-18 state-dict path (Python: or an nn.Module); "
                "None: random-init ResNet-18, with a warning", "metavar": "PATH"})
    feature_cache: bool = field(default=True, metadata={
        "help": "one backbone pass per image, shared by every method and kind (off: a pass per request, slower)"})
    feature_cache_mb: float = field(default=DEFAULT_FEATURE_CACHE_MB, metadata={
        "help": "memory for cached features per category in MB; past it they spill to disk (0: all on disk)", "metavar": "MB"})
    feature_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "where the cache's spill folder is made (None: the temp folder); removed after each category", "metavar": "DIR"})
    # -- paired bootstrap intervals over test images (evaluation/bootstrap.py) --
    bootstrap_resamples: int = field(default=DEFAULT_BOOTSTRAP_RESAMPLES, metadata={
        "help": "resamples of the test images for the paired interval of every w/ - w/o difference (0: no intervals)",
        "metavar": "B"})
    bootstrap_confidence: float = field(default=DEFAULT_BOOTSTRAP_CONFIDENCE, metadata={
        "help": "coverage of those intervals (percentile bootstrap)", "metavar": "C"})
    bootstrap_seed: int = field(default=0, metadata={"help": "seeds the test-image resamples (mixed with each category's name)"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "free-form notes recorded in results.json, a YAML/JSON mapping (the CLI adds its command line)"})

    def __post_init__(self) -> None:
        from ..modeling.configuration_adpretrain import FEATURE_KINDS

        if not isinstance(self.data_root, (str, os.PathLike)):
            raise TypeError(f"data_root must be a folder path, got {type(self.data_root).__name__}")
        self.data_root = os.fspath(self.data_root)
        if self.output_dir is not None:
            self.output_dir = os.fspath(self.output_dir)
        self.categories = _names(self.categories, "categories")
        methods = _names(self.methods, "methods")
        assert methods is not None
        self.methods = tuple(name.lower() for name in methods)
        kinds = _names(self.kinds, "kinds")
        self.kinds = None if kinds is None else tuple(k for k in FEATURE_KINDS if k in kinds) + tuple(k for k in kinds if k not in FEATURE_KINDS)
        if self.feature_cache_dir is not None:
            self.feature_cache_dir = os.fspath(self.feature_cache_dir)
        if self.dtype is not None and not isinstance(self.dtype, str):  # a torch.dtype
            self.dtype = str(self.dtype).replace("torch.", "")
        if self.device is not None:
            self.device = str(self.device)

    @property
    def torch_dtype(self) -> Optional["torch.dtype"]:
        return parse_dtype(self.dtype)

    @property
    def effective_strategy(self) -> str:
        """Several reference sets from "first" would all be the same set: they are drawn at random."""
        if self.reference_seeds > 1 and self.reference_strategy == "first":
            return "random"
        return self.reference_strategy

    @property
    def seeds(self) -> list[int]:
        """One seed per reference set: ``reference_seed, reference_seed + 1, ...``."""
        return [self.reference_seed + i for i in range(self.reference_seeds)]

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """The kinds evaluated, in :data:`FEATURE_KINDS` order."""
        if self.kinds is not None:
            return self.kinds
        return DEFAULT_KINDS if self.compare_backbone else ("pretrained",)

    def validate(self) -> "EvaluationConfig":
        """Raise ``ValueError`` / ``TypeError`` naming the bad setting and the fix."""
        from ..detectors import DETECTORS
        from ..modeling.configuration_adpretrain import FEATURE_KINDS

        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"unknown layout {self.layout!r}: choose one of {list(LAYOUT_CHOICES)}")
        unknown = [name for name in self.methods if name not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: choose from {sorted(DETECTORS)}")
        if self.protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"unknown protocol {self.protocol!r}: choose one of {list(PROTOCOL_CHOICES)}")
        if self.reference_strategy not in REFERENCE_STRATEGY_CHOICES:
            raise ValueError(
                f"unknown reference_strategy {self.reference_strategy!r}: choose one of {list(REFERENCE_STRATEGY_CHOICES)}"
            )
        unknown_kinds = [kind for kind in self.feature_kinds if kind not in FEATURE_KINDS]
        if unknown_kinds:
            raise ValueError(f"unknown feature kind(s) {unknown_kinds}: choose from {list(FEATURE_KINDS)}, comma-separated")
        if "glass" in self.methods and "residual" in self.feature_kinds:
            raise ValueError("GLASS picks its adaptor by feature kind and has none for 'residual': drop glass or the residual kind")
        if isinstance(self.feature_cache_mb, bool) or not isinstance(self.feature_cache_mb, (int, float)) or self.feature_cache_mb < 0:
            raise ValueError(f"feature_cache_mb={self.feature_cache_mb!r} must be a number >= 0 (0: the cache lives on disk)")
        for name in ("shots", "reference_seeds", "batch_size"):
            _check_int(name, getattr(self, name), 1)
        for name in ("reference_seed", "split_seed", "num_overlays", "bootstrap_resamples", "bootstrap_seed"):
            _check_int(name, getattr(self, name), 0)
        _check_fraction("train_fraction", self.train_fraction, low_open=True, high_closed=True)
        _check_fraction("noise_ratio", self.noise_ratio, low_open=False, high_closed=False)
        _check_fraction("realiad_fit_fraction", self.realiad_fit_fraction, low_open=True, high_closed=False)
        _check_fraction("bootstrap_confidence", self.bootstrap_confidence, low_open=True, high_closed=False)
        if self.train_shots is not None:
            _check_int("train_shots", self.train_shots, 1)
            if self.train_fraction != 1.0:
                raise ValueError(
                    "train_shots and train_fraction both subsample the training set: pass one of them "
                    f"(got train_shots={self.train_shots}, train_fraction={self.train_fraction})"
                )
        parse_dtype(self.dtype)
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples as lists), for the ``"config"`` block of ``results.json``."""
        net = self.aligned_feature_net
        data = asdict(replace(self, aligned_feature_net=None))
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        # A module is recorded by its class name: the JSON says which net, not its weights.
        data["aligned_feature_net"] = net if net is None or isinstance(net, (str, os.PathLike)) else type(net).__name__
        data["aligned_feature_net"] = str(data["aligned_feature_net"]) if data["aligned_feature_net"] is not None else None
        data["effective_reference_strategy"] = self.effective_strategy
        return data


def make_config(config: Union[None, "EvaluationConfig", str, os.PathLike] = None, **overrides: Any) -> EvaluationConfig:
    """``config`` (an :class:`EvaluationConfig`, or the dataset folder as a shortcut) with
    ``overrides`` applied; every name is checked against the fields first.

    Raises ``TypeError`` naming an unknown setting and the closest field, or a missing ``data_root``.
    """
    known = [f.name for f in fields(EvaluationConfig)]
    settings = dict(overrides)
    for name in settings:
        if name not in known:
            raise TypeError(f"unknown evaluation setting {name!r}: {suggest(name, known)} (the fields of EvaluationConfig)")
    if isinstance(config, EvaluationConfig):
        return replace(config, **settings)
    if config is not None:
        if not isinstance(config, (str, os.PathLike)):
            raise TypeError(f"config must be an EvaluationConfig or the dataset folder, got {type(config).__name__}")
        if "data_root" in settings:
            raise TypeError("data_root given twice: pass the dataset folder either positionally or as data_root=")
        settings["data_root"] = config
    if "data_root" not in settings:
        raise TypeError("no data_root: pass the dataset folder, e.g. evaluate_model(model, '/data/mvtec_ad')")
    return EvaluationConfig(**settings)
