"""The typed configuration tree: one source of truth for every knob.

Each section is a dataclass. ``to_dict``/``from_dict`` (``ssnf.configtree``, imported from here) convert a
section (or a tree of them) to plain Python values and back with type checks, and ``flatten``/``unflatten`` turn
a tree into dotted keys (``data.image_size``) and back, the spelling of Parquet columns and ``--set key=value``.
The library never reads YAML implicitly: ``ssnf.configfile.load_config`` is the function its callers (the CLI,
``tune_main.py``, the benchmarks) call, and it hands the result to ``from_dict``.

A choice is spelled once, as a ``Literal`` type here (``Layout``, ``LossForm``, ``MapKind``, ...): a field's
type is what ``from_dict`` and ``validate`` check (``check_choices``), and ``typing.get_args`` of it gives the
CLI's ``choices`` and the tuples the rest of the library reads (``MAP_KINDS``, ``THRESHOLD_METHODS``, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, get_args

# the tree's conversions live in ssnf/configtree.py; importable from here, where every caller imports them
from ssnf.configtree import check_choices, flatten, from_dict, merge, to_dict, unflatten, with_overrides  # noqa: F401
from ssnf.errors import ConfigError

# the choices of the config tree (and of the commands that share them), each spelled once
Layout = Literal["auto", "mvtec", "btad", "dagm", "folder"]  # ssnf/data/layouts.py: a reader per name but auto
Reference = Literal["standard", "graded"]  # the validation recipes of ssnf/synthesis/reference.py
Nuisance = Literal["none", "photometric", "full"]  # the validation nuisance recipes of ssnf/synthesis/nuisance.py
Augment = Literal["none", "photometric", "geometric", "full"]  # training augmentation (ssnf/synthesis/nuisance.py)
Norm = Literal["none", "fixed", "actnorm"]  # ssnf/model/flow.py
LossForm = Literal["constrained", "hinge", "mask"]
LossGate = Literal["none", "novel"]
LossSchedule = Literal["constant", "linear"]
LossAnchor = Literal["none", "unchanged"]
FlowKind = Literal["density", "fastflow", "z2", "nll"]  # maps of the flows' outputs
# maps of the memory bank (``bank.enabled``): knn = the distance of each patch to its nearest training patch;
# fusedNN = NN % of the flows' nll map + the rest of the knn map, each standardised on validation normals
FusedKind = Literal["fused25", "fused50", "fused75"]
BankKind = Literal["knn", FusedKind]
MapKind = Literal[FlowKind, BankKind]
ImageScore = Literal["max", "topk"]
ThresholdMethod = Literal["auto", "conformal", "empirical", "gumbel", "normal", "f1"]
Device = Literal["auto", "cpu", "cuda"]  # train.device, ssnf predict --device
Precision = Literal["fp32", "bf16"]
Blend = Literal["poisson", "feather", "paste"]
Foreground = Literal["auto", "bright", "dark", "object"]
ExportFormat = Literal["onnx", "torchscript"]  # ssnf export --format (ssnf/export.py)
MapFormat = Literal["png16", "npy", "none"]  # ssnf predict --maps (ssnf/predict.py)

AUTO = "auto"
PRECISIONS = get_args(Precision)
NORMS = get_args(Norm)
FLOW_KINDS = get_args(FlowKind)
FUSED_WEIGHTS = {kind: int(kind.removeprefix("fused")) / 100 for kind in get_args(FusedKind)}  # the flow's share
BANK_KINDS = get_args(BankKind)
MAP_KINDS = get_args(MapKind)
IMAGE_SCORES = get_args(ImageScore)
THRESHOLD_METHODS = get_args(ThresholdMethod)


@dataclass
class DataConfig:
    """Which images to read and how to split them."""

    root: str = "demo_data"
    category: str = "weave"
    layout: Layout = "auto"
    image_size: int = 256  # square side in pixels the images and masks are resized to
    val_fraction: float = 0.1  # share of normal training images held out as validation normals
    few_shot: int = 0  # keep this many normal training images (0: all)
    seed: int = 0  # drives the validation hold-out, its synthetic anomalies and the few-shot choice
    # the validation anomalies' recipe (ssnf/synthesis/reference.py). standard: the defects blended in at 30-100 %.
    # graded (default): subtle / moderate / clear defects whose contrast is drawn in units of each image's noise
    # level and whose size shrinks with the grade: harder, so that validation still ranks configs where standard
    # saturates (docs/benchmarks.md: issue 20, and "Robustness" for the default)
    reference: Reference = "graded"
    # held-out normals under nuisance transforms that a good part never stops being (ssnf/synthesis/nuisance.py),
    # scored as normals beside the clean ones: a config that flags a change of lighting or a small shift scores
    # lower. none | photometric (brightness, contrast, gamma, colour temperature, blur, noise) | full (default:
    # photometric + a small translation / rotation / scale); magnitudes measured from the training images' spread
    nuisance: Nuisance = "full"
    # "folder" layout only: folders under <root>/<category> (absolute paths also work).
    normal_dir: str = "good"
    abnormal_dir: str = "defect"
    mask_dir: str = ""  # empty: the abnormal images have no masks (no pixel metrics)
    normal_test_dir: str = ""  # empty: hold out normal_test_fraction of normal_dir for testing
    normal_test_fraction: float = 0.2

    def validate(self) -> None:
        check_choices(self, "data")
        if self.image_size < 32:
            raise ConfigError(f"data.image_size={self.image_size} is too small (32 pixels at least)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must lie in [0, 1)")
        if self.few_shot < 0:
            raise ConfigError(f"data.few_shot={self.few_shot} must be 0 (all) or a positive count")
        if not 0.0 < self.normal_test_fraction < 1.0:
            raise ConfigError(f"data.normal_test_fraction={self.normal_test_fraction} must lie in (0, 1)")


@dataclass
class BackboneConfig:
    """The frozen CNN whose features the flow models."""

    name: str = "mobilenetv2_100"  # any timm model with features_only support
    strides: tuple[int, ...] = (8, 16)  # feature levels, by their stride w.r.t. the input
    weights: str = ""  # a weights file; empty: ssnf's cache, then timm's hub when online
    pretrained: bool = True  # False: random weights (tests, ablations)

    def validate(self) -> None:
        if not self.strides:
            raise ConfigError("backbone.strides is empty: name at least one feature stride, e.g. 8")
        if list(self.strides) != sorted(set(self.strides)):
            raise ConfigError(f"backbone.strides={self.strides} must be increasing and distinct")


@dataclass
class ModelConfig:
    """The flows: one per feature scale, ``couplings`` AllInOneBlocks each."""

    blocks: str = "conv,attn"  # residual blocks of each coupling subnet; "conv,attn|conv" = one stack per scale
    hidden: int = 128  # subnet width
    heads: int = 4  # attention heads (must divide hidden)
    attn_dropout: float = 0.0
    attn_kv_size: int = 16  # attention keys/values pooled to at most this many positions a side
    pos_encoding: bool = True
    couplings: int = 10
    # per feature scale (finest first), cheaper flows where a scale needs less: couplings and subnet widths of
    # each scale's flow; empty: `couplings` / `hidden` on every scale
    scale_couplings: tuple[int, ...] = ()
    scale_hidden: tuple[int, ...] = ()
    clamp: float = 2.0  # affine clamp of the couplings
    permute_soft: bool = False  # random rotations instead of hard channel permutations
    norm: Norm = "fixed"  # the per-channel affine in front of each flow
    position: bool = False  # condition every coupling on a 2-D positional encoding (CFlow-AD style)
    pos_channels: int = 32  # channels of that encoding

    def validate(self) -> None:
        check_choices(self, "model")
        if self.hidden < 4 or self.couplings < 1:
            raise ConfigError(f"model.hidden={self.hidden} and model.couplings={self.couplings} must be positive")
        if self.hidden % self.heads:
            raise ConfigError(f"model.heads={self.heads} does not divide model.hidden={self.hidden}")
        if any(c < 1 for c in self.scale_couplings):
            raise ConfigError(f"model.scale_couplings={list(self.scale_couplings)}: each scale needs at least 1 coupling")
        bad = [h for h in self.scale_hidden if h < 4 or h % self.heads]
        if bad:
            raise ConfigError(f"model.scale_hidden={list(self.scale_hidden)}: width {bad[0]} must be at least 4 and a "
                              f"multiple of model.heads={self.heads}")
        if self.clamp <= 0:
            raise ConfigError(f"model.clamp={self.clamp} must be positive")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ConfigError(f"model.attn_dropout={self.attn_dropout} must lie in [0, 1)")
        if self.position and (self.pos_channels < 4 or self.pos_channels % 4):
            raise ConfigError(f"model.pos_channels={self.pos_channels} must be a positive multiple of 4")


@dataclass
class LossConfig:
    """NLL of normal images plus ``weight`` x a push on synthetic anomalies (weight 0: plain FastFlow).

    Defaults chosen on *validation* (held-out normals + reference anomalies, never test images) on tire
    and magnetic_tile: the mask-aware form beat both w = 0 and the paper's image-level constrained form,
    which diverges without a cap and, with one, hurt validation; the novelty gate (q 0.9) then beat the
    ungated mask form and w = 0 on both categories; the anchor then beat w = 0 on both and the unanchored
    gated form on tire, level with it on magnetic_tile (see docs/benchmarks.md).
    """

    weight: float = 0.2  # w: the synthetic term's weight
    form: LossForm = "mask"  # constrained (the paper's image-level rule) | hinge | mask (per position)
    margin: float = 1.0  # hinge / mask: nats per dimension to push past the normal reference
    cap: float = 1.0  # constrained: images above this NLL per dimension never count (0: no cap, unstable)
    # mask: which covered positions are pushed. none: all of them. novel: only those whose backbone feature is
    # farther from every normal feature of the batch than `gate_quantile` of normal features are from the
    # other normal images (pasted content that looks like normal texture is left alone).
    gate: LossGate = "novel"
    gate_quantile: float = 0.9
    # how w moves over training. constant: w all along. linear: from w at the first step down to 0 at the last
    # (the push shapes the flow early; the last steps are close to plain NLL).
    schedule: LossSchedule = "constant"
    # what the push may do to the rest of a synthetic image. none: nothing holds it. unchanged: the positions
    # whose backbone features the synthesis left unchanged (relative change below `anchor_tol`) are held at
    # the NLL of the same position of the original image (a hinge on any rise, with weight w): the flow may
    # not flag a whole image because part of it was pasted over. Chosen on validation: ahead of w = 0 on both
    # categories, ahead of `none` on tire and level with it on magnetic_tile (docs/benchmarks.md).
    anchor: LossAnchor = "unchanged"
    anchor_tol: float = 0.05

    def validate(self) -> None:
        check_choices(self, "loss")
        if self.weight < 0:
            raise ConfigError(f"loss.weight={self.weight} must be 0 or positive")
        if self.margin < 0 or self.cap < 0:
            raise ConfigError(f"loss.margin={self.margin} and loss.cap={self.cap} must not be negative")
        if not 0.0 < self.gate_quantile < 1.0:
            raise ConfigError(f"loss.gate_quantile={self.gate_quantile} must lie in (0, 1)")
        if not 0.0 < self.anchor_tol < 1.0:
            raise ConfigError(f"loss.anchor_tol={self.anchor_tol} must lie in (0, 1)")


@dataclass
class ScoringConfig:
    """From flow outputs to anomaly maps and image scores.

    ``auto`` values are chosen per trained model on validation (held-out normal images and reference
    anomalies, never test images): the pixel map by validation pixel AUROC, the image score's map and
    reducer by validation image AUROC. The pixel map leaves its prior, ``nll``, only when another kind
    wins in ``switch_confidence`` of bootstrap resamples of the validation images.
    The choice is kept with the model (``SSNFModel.scoring``) and saved in its checkpoint.
    """

    # the pixel map: auto | density (the paper: -mean_c exp(-z^2/2)) | fastflow | z2 | nll; with a memory bank
    # (bank.enabled) also knn (PatchCore's nearest-neighbour distance) | fused25 | fused50 | fused75 (the nll and
    # knn maps standardised on validation normals and mixed with 25 / 50 / 75 % on the flow)
    map: Literal["auto", MapKind] = AUTO
    image_map: Literal["auto", "pixel", MapKind] = AUTO  # the map the image score is taken from (pixel: map's)
    image_score: Literal["auto", ImageScore] = AUTO
    smooth_sigma: float = 4.0  # Gaussian smoothing of the full-size map, in pixels (0: none)
    topk: float = 0.01  # topk: mean of this share of the highest pixels
    switch_confidence: float = 0.95  # auto map: share of bootstrap rounds a map must win over nll (0: argmax)

    def validate(self) -> None:
        check_choices(self, "scoring")
        if not 0.0 < self.topk <= 1.0 or self.smooth_sigma < 0:
            raise ConfigError(f"scoring.topk={self.topk} must lie in (0, 1], smooth_sigma={self.smooth_sigma} >= 0")
        if not 0.0 <= self.switch_confidence <= 1.0:
            raise ConfigError(f"scoring.switch_confidence={self.switch_confidence} must lie in [0, 1]")

    @property
    def resolved(self) -> bool:
        """True when nothing is left to choose on validation."""
        return AUTO not in (self.map, self.image_map, self.image_score)


@dataclass
class ThresholdConfig:
    """The decision thresholds set after training from validation normals only (``ssnf.threshold``).

    ``fpr``: the share of normal images the image threshold may flag; ``pixel_fpr``: the share of normal pixels
    the masks may mark. ``method``: how the image quantile is estimated from a few dozen normals (``auto``:
    the empirical quantile when at least 10 normals lie beyond it, else a fitted Gumbel tail); ``f1``: F1-max
    on the validation reference anomalies instead (synthetic defects; off by default); ``conformal``: an order
    statistic of the normals' scores with a stated promise (image FPR <= ``fpr`` with probability >= 1 - ``delta``;
    pixel FPR <= ``pixel_fpr`` in expectation), refused in one line where the normals are too few for the request
    (``ssnf calibrate --normals``: the line's good images, any number). ``ssnf predict --fpr`` re-reads both from
    the normals kept in the checkpoint."""

    fpr: float = 0.01
    pixel_fpr: float = 0.01
    method: ThresholdMethod = "auto"
    # conformal: the promise holds with probability >= 1 - delta over the draw of the calibration normals
    delta: float = 0.05

    def validate(self) -> None:
        check_choices(self, "threshold")
        for key in ("fpr", "pixel_fpr"):
            value = getattr(self, key)
            if not 1e-6 <= value < 0.5:
                raise ConfigError(f"threshold.{key}={value} must lie in [1e-6, 0.5)")
        if not 1e-6 <= self.delta < 0.5:
            raise ConfigError(f"threshold.delta={self.delta} must lie in [1e-6, 0.5)")


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 20
    batch_size: int = 16  # normal images per step (as many synthetic ones join them when weight > 0)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 5.0  # max gradient norm (0: none)
    seed: int = 0
    val_every: int = 1  # validate every this many epochs (and always after the last)
    feature_cache: bool = True  # normal images' backbone features computed once and kept on disk;
    # False: the backbone runs on every normal batch at every step (the slow baseline)
    feature_noise: float = 0.0  # Gaussian noise added to the flows' training inputs, in units of each channel's
    # standard deviation over the training features (0: none); regularises the density where features barely vary
    # photometric / geometric augmentation of the normal training images (ssnf/synthesis/nuisance.py, the same
    # families as validation's nuisance normals, drawn from training's own random stream on training images):
    # none | photometric | geometric | full. An augmented image's features are computed by the backbone at that
    # step (the cached features are those of the unaugmented images); the synthetic half is made from it too
    augment: Augment = "none"
    augment_p: float = 0.5  # share of a batch's normal images augmented (each image with this probability)
    augment_strength: float = 1.0  # the category's measured nuisance magnitudes are scaled by this
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: Device = "auto"
    # fp32 | bf16: arithmetic of the backbone and the coupling subnets, in training, validation and inference
    # (bf16: autocast; the couplings' affine, log-determinants and the loss stay float32). bf16 by default:
    # 1.6x faster training on an AVX-512 BF16 CPU with validation held within 0.005 of fp32 on tire at two
    # seeds (docs/benchmarks.md); where the hardware has no bfloat16 arithmetic training warns: use fp32 there
    precision: Precision = "bf16"

    def validate(self) -> None:
        check_choices(self, "train")
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ConfigError(
                f"train.epochs={self.epochs}, batch_size={self.batch_size}, val_every={self.val_every} must be >= 1"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be positive")
        if not 0.0 <= self.feature_noise < 10.0:
            raise ConfigError(f"train.feature_noise={self.feature_noise} must lie in [0, 10)")
        if not 0.0 < self.augment_p <= 1.0 or not 0.0 < self.augment_strength <= 3.0:
            raise ConfigError(f"train.augment_p={self.augment_p} must lie in (0, 1] and train.augment_strength="
                              f"{self.augment_strength} in (0, 3]")


@dataclass
class SynthesisConfig:
    """Synthetic anomalies: patches of another normal image blended in (the paper uses NSA's recipe)."""

    max_patches: int = 3  # the first patch always, each further one with probability p_extra
    p_extra: float = 0.5
    gamma_shape: float = 2.0  # patch half-width = (offset + Gamma(shape, scale)) x image side ...
    gamma_scale: float = 0.05
    gamma_offset: float = 0.03
    width_min: float = 0.05  # ... clipped to [width_min, width_max] x image side
    width_max: float = 0.2
    resize: bool = True  # rescale the cut patch by N(1, 0.5) clipped to [resize_min, resize_max]
    resize_min: float = 0.7
    resize_max: float = 1.3
    shift: bool = True  # paste at a new place (False: where it was cut)
    object_aware: bool = False  # place patches only on the foreground (``foreground``)
    # auto | bright | dark: a side of an Otsu intensity threshold; object: what departs from the border's
    # background in colour or contrast (training: none for a whole category unless 90 % of its images have one)
    foreground: Foreground = "auto"
    min_object: float = 0.25  # share of a patch that must lie on the foreground
    blend: Blend = "poisson"  # poisson: OpenCV's seamlessClone
    feather_sigma: float = 0.15  # feathered edge width, as a fraction of the patch half-width
    label_tol: float = 1.0  # mean absolute change (0-255) for a pixel to count as anomalous
    pool_size: int = 0  # 0: synthesize every step; N: a fixed pool of N images, features cached once

    def validate(self) -> None:
        check_choices(self, "synthesis")
        if self.max_patches < 1:
            raise ConfigError(f"synthesis.max_patches={self.max_patches} must be at least 1")
        if not 0.0 <= self.p_extra <= 1.0:
            raise ConfigError(f"synthesis.p_extra={self.p_extra} must lie in [0, 1]")
        if not 0.0 < self.width_min <= self.width_max < 0.5:
            raise ConfigError(
                f"synthesis.width_min={self.width_min}, width_max={self.width_max}: need 0 < min <= max < 0.5"
            )
        if not 0.0 < self.resize_min <= 1.0 <= self.resize_max:
            raise ConfigError(f"synthesis.resize_min/max={self.resize_min}/{self.resize_max} must bracket 1")
        if self.pool_size < 0:
            raise ConfigError(f"synthesis.pool_size={self.pool_size} must be 0 (online) or a pool size")


@dataclass
class BankConfig:
    """A memory bank of training patch features (PatchCore's score on the flows' own cached features).

    ``enabled``: the model keeps a coreset of its training images' patch features (each position's features
    averaged over a ``neighbourhood`` x ``neighbourhood`` window, the coarser scales upsampled onto the finest
    grid and concatenated); the ``knn`` map is a position's distance to its nearest bank entry, and the ``fused*``
    maps mix it with the flows' ``nll`` map. With ``scoring.*`` at ``auto``, validation chooses among the flow,
    bank and fused maps. The coreset (greedy k-centre on a random projection) is built once per extractor
    setting: a sweep shares it between its trials like the features."""

    enabled: bool = False
    coreset: float = 0.1  # share of the training positions kept
    max_entries: int = 16384  # at most this many entries (inference cost grows with them)
    neighbourhood: int = 3  # patch: features averaged over this many positions a side (odd)
    projection: int = 128  # dimensions of the random projection the coreset is chosen in (0: none)

    def validate(self) -> None:
        if not 0.0 < self.coreset <= 1.0:
            raise ConfigError(f"bank.coreset={self.coreset} must lie in (0, 1]")
        if self.max_entries < 1:
            raise ConfigError(f"bank.max_entries={self.max_entries} must be at least 1")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"bank.neighbourhood={self.neighbourhood} must be a positive odd number")
        if self.projection < 0:
            raise ConfigError(f"bank.projection={self.projection} must be 0 (none) or a number of dimensions")


@dataclass
class SSNFConfig:
    """The whole tree: what a trial runs with, what a checkpoint stores, what Parquet flattens."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bank: BankConfig = field(default_factory=BankConfig)

    @property
    def feature_precision(self) -> str:
        """The arithmetic of the frozen backbone: ``train.precision``, except with a memory bank (float32: a
        nearest-neighbour distance between close patch features is lost in bfloat16's 8-bit mantissa)."""
        return "fp32" if self.bank.enabled else self.train.precision

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        gated = self.loss.weight > 0 and self.loss.form == "mask" and self.loss.gate == "novel"
        if gated and self.train.batch_size < 2:
            raise ConfigError(f"loss.gate='novel' compares normal images of a batch with each other: "
                              f"train.batch_size={self.train.batch_size} must be at least 2")
        fixed = [k for k in (self.scoring.map, self.scoring.image_map) if k in BANK_KINDS]
        if fixed and not self.bank.enabled:
            raise ConfigError(f"scoring map {fixed[0]!r} needs the memory bank: set bank.enabled=true")
        if self.loss.weight > 0 and self.loss.anchor != "none" and self.synthesis.pool_size:
            raise ConfigError(f"loss.anchor={self.loss.anchor!r} holds a synthetic image to its original, which a "
                              f"pool (synthesis.pool_size={self.synthesis.pool_size}) does not keep: "
                              "set loss.anchor=none to use a pool")
