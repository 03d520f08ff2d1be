"""Configuration of boosted early-exit encoders (BoostNet, docs/boost.md; Yu et al., AAAI 2023, arXiv 2211.16726).

The backbone's own configuration is nested as a sub-config (serialised as a dict carrying its ``model_type`` and
rebuilt through ``CONFIG_MAPPING``), so any registered encoder type works: BERT, RoBERTa, DistilBERT, and
hf_dynamic's ``partial_moe_bert``.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...boost.criteria import EXIT_CRITERIA as _CRITERIA
from ...boost.criteria import ExitSettings, get_criterion
from ...boost.heads import EXIT_POOLINGS
from ...core.validation import check_bool, check_choice, check_number

EXIT_CRITERIA = tuple(_CRITERIA)  # the names registered in hf_dynamic.boost.criteria


class BoostedEarlyExitConfig(PreTrainedConfig):
    r"""Configuration of [`BoostedEarlyExitForSequenceClassification`].

    Args:
        backbone (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of the encoder whose layers carry the exits (a dict must carry ``model_type``). Defaults to
            a default ``BertConfig``.
        exit_layers (`list[int]`, *optional*):
            1-based backbone layer numbers after which an exit head sits, strictly increasing; the last one must be
            the backbone's last layer (the full model is the last exit). Defaults to every layer; stored concrete.
        boosting (`bool`, defaults to `True`):
            `True`: BoostNet, exit n predicts ``F_n = t·F_{n-1} + f_n`` and is trained on
            ``L(t·stop_grad(F_{n-1}) + f_n, y)``. `False`: the jointly trained multi-exit baseline (DeeBERT-style),
            exit n predicts its own ``f_n`` and is trained on ``L(f_n, y)``.
        ensemble_temperature (`float`, defaults to 0.5):
            t, the reweighting of the previous ensemble (BoostNet "prediction reweighting"); must be > 0.
        gradient_rescale (`bool`, defaults to `True`):
            Scale the gradient reaching each backbone block from the exits at or after it by ``1/(N-n+1)``.
        exit_criterion (`str`, defaults to `"confidence"`):
            ``"confidence"``: exit when the max softmax probability of the exit's prediction ≥ threshold;
            ``"entropy"``: exit when the entropy (nats) of its softmax ≤ threshold (DeeBERT);
            ``"patience"``: exit when ``exit_patience`` consecutive exits agree (PABEE): same argmax for
            classification, ``|Δ prediction| ≤ patience_tolerance`` for regression.
        exit_thresholds (`list[float]`, *optional*):
            One threshold per exit (the last exit accepts every remaining sample whatever its threshold). `None`: no
            early exit for the confidence / entropy criteria. Set by [`calibrate_thresholds`].
        exit_patience (`int`, *optional*):
            Number of consecutive agreeing exits for ``exit_criterion="patience"``; `None`: no early exit.
        patience_tolerance (`float`, defaults to 0.1):
            Regression only: two consecutive predictions agree when they differ by at most this much.
        exit_loss_weights (`list[float]`, *optional*):
            w_n of the loss ``Σ_n w_n·L_n``, one per exit; `None`: all 1.
        classifier_dropout (`float`, *optional*):
            Dropout in the exit heads; `None`: the backbone's hidden dropout.
        exit_pooling (`str`, defaults to `"cls"`):
            How an exit head pools a layer's tokens: ``"cls"`` (first token, BERT / DeeBERT) or ``"mean"`` (mean
            over non-padding tokens, as sentence-transformers models such as all-MiniLM-L6-v2 pool).
    """

    model_type = "boosted_early_exit"
    sub_configs_defaults = {"backbone": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    keys_to_ignore_at_inference = ["all_exit_logits", "exit_layer", "exit_losses", "aux_loss"]

    backbone: PreTrainedConfig | dict | None = None
    exit_layers: list[int] | None = None
    boosting: bool = True
    ensemble_temperature: float = 0.5
    gradient_rescale: bool = True
    exit_criterion: str = "confidence"
    exit_thresholds: list[float] | None = None
    exit_patience: int | None = None
    patience_tolerance: float = 0.1
    exit_loss_weights: list[float] | None = None
    classifier_dropout: float | None = None
    exit_pooling: str = "cls"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.exit_layers is None:
            self.exit_layers = list(range(1, self.num_backbone_layers + 1))
        self.exit_layers = _checked_list("exit_layers", self.exit_layers, integer=True)
        if self.exit_thresholds is not None:  # ±inf allowed (never / always fires), NaN refused
            self.exit_thresholds = [float(x) for x in _checked_list("exit_thresholds", self.exit_thresholds,
                                                                     finite=False)]
        self.check_exit_setup()

    @property
    def num_backbone_layers(self) -> int:
        """Number of layers of the backbone (``num_hidden_layers`` through the backbone's attribute map)."""
        layers = getattr(self.backbone, "num_hidden_layers", None)
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"backbone config has no valid num_hidden_layers (got {layers!r})")
        return layers

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression" or self.num_labels == 1

    @property
    def dynamic_exit_enabled(self) -> bool:
        """Whether inference exits early (thresholds set, or patience set for the patience criterion)."""
        return get_criterion(self.exit_criterion).enabled(self.exit_settings())

    def exit_settings(self) -> ExitSettings:
        """This config's exit fields as the :class:`~hf_dynamic.boost.criteria.ExitSettings` the exit rule reads."""
        thresholds = self.exit_thresholds
        return ExitSettings(
            criterion=self.exit_criterion,
            num_exits=self.num_exits,
            thresholds=None if thresholds is None else tuple(thresholds),
            patience=self.exit_patience,
            tolerance=self.patience_tolerance,
            regression=self.is_regression,
        )

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The backbone's config: it holds the text fields (``vocab_size``, ...) that transformers' utilities such
        as ``resize_token_embeddings`` read and update."""
        return self.backbone

    def check_exit_setup(self):
        """Validate the exit fields; raise ``ValueError`` naming the field and its value."""
        total = self.num_backbone_layers
        layers = self.exit_layers
        if not layers:
            raise ValueError(f"exit_layers must list at least one layer, got {layers!r}")
        for layer in layers:
            if not 1 <= layer <= total:
                raise ValueError(f"exit_layers: layer {layer} is out of range [1, {total}] (exit_layers={layers})")
        if len(set(layers)) != len(layers):
            raise ValueError(f"exit_layers has a duplicated layer: {layers}")
        if list(layers) != sorted(layers):
            raise ValueError(f"exit_layers must be increasing, got {layers}")
        if layers[-1] != total:
            raise ValueError(
                f"exit_layers must end with the backbone's last layer {total} (the full model is the last exit), "
                f"got {layers}; truncate the backbone to use fewer layers"
            )
        check_bool("boosting", self.boosting)
        check_bool("gradient_rescale", self.gradient_rescale)
        check_number("ensemble_temperature", self.ensemble_temperature, gt=0)
        check_choice("exit_pooling", self.exit_pooling, EXIT_POOLINGS)
        criterion = get_criterion(self.exit_criterion)
        if self.exit_thresholds is not None:
            thresholds = _checked_list("exit_thresholds", self.exit_thresholds, finite=False)
            if len(thresholds) != len(layers):
                raise ValueError(
                    f"exit_thresholds has {len(thresholds)} values but there are {len(layers)} exits "
                    f"(exit_layers={layers})"
                )
        if self.exit_patience is not None:
            check_number("exit_patience", self.exit_patience, integer=True, ge=1)
        check_number("patience_tolerance", self.patience_tolerance, ge=0)
        if self.exit_loss_weights is not None:
            weights = _checked_list("exit_loss_weights", self.exit_loss_weights, ge=0)
            if len(weights) != len(layers):
                raise ValueError(f"exit_loss_weights has {len(weights)} values but there are {len(layers)} exits")
        if self.classifier_dropout is not None:
            check_number("classifier_dropout", self.classifier_dropout, ge=0, le=1)
        self.check_problem_type()
        criterion.check(self.exit_settings())

    def check_problem_type(self):
        """Boosted exits are single-label classifiers or regressors: ``ValueError`` for multi-label."""
        if self.problem_type == "multi_label_classification":
            raise ValueError("problem_type='multi_label_classification' is not supported by boosted early exits")


def _checked_list(name, values, **number_checks) -> list:
    """``values`` as a list after :func:`~hf_dynamic.core.validation.check_number` (``number_checks``: its keyword
    arguments) on each entry, named ``name[i]``; ``ValueError`` when it is not a list or tuple."""
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list, got {values!r} ({type(values).__name__})")
    for index, value in enumerate(values):
        check_number(f"{name}[{index}]", value, **number_checks)
    return list(values)


__all__ = ["BoostedEarlyExitConfig", "EXIT_CRITERIA", "EXIT_POOLINGS"]
