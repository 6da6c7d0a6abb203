"""The price table: online prices per model and the batch discount, read from a TOML file.

The packaged table is ``descgen/pricing.toml``; ``--pricing FILE`` replaces it. Prices are US dollars
per 1M tokens, keyed by ``"backend/model"`` or just ``"model"``. ``batch_discount`` is the fraction of
the online price that a request sent through a batch costs (default 0.5). Both ``descgen usage`` and
the estimate of ``generate --dry-run`` price tokens through :class:`PriceTable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from descgen.errors import DescgenError

DEFAULT_BATCH_DISCOUNT = 0.5
FREE_BACKENDS = ("import", "vllm")  # local models and imported files cost nothing unless listed


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    batch_discount: float = DEFAULT_BATCH_DISCOUNT

    def price_for(self, backend: str, model: str) -> dict[str, float] | None:
        """{"input": x, "output": y} per 1M tokens; None when the model is not priced."""
        for key in (f"{backend}/{model}", model):
            if key in self.prices:
                return self.prices[key]
        if backend in FREE_BACKENDS:
            return {"input": 0.0, "output": 0.0}
        return None

    def online_cost(
        self, backend: str, model: str, prompt_tokens: int, completion_tokens: int
    ) -> float | None:
        """The cost in US dollars of these tokens at the online price; None when the model is not priced."""
        price = self.price_for(backend, model)
        if price is None:
            return None
        return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1_000_000

    def costs(
        self, backend: str, model: str, tokens: tuple[int, int], batch_tokens: tuple[int, int] = (0, 0)
    ) -> dict[str, float | None]:
        """Costs of answers with ``tokens`` (prompt, completion) in all, of which ``batch_tokens`` came
        through a batch: ``online_cost_usd`` (all at the online price), ``batch_cost_usd`` (the batch
        share at ``batch_discount`` times that), ``batch_saving_usd`` and ``cost_usd`` (online minus
        the saving). All None when the model has no price."""
        online = self.online_cost(backend, model, *tokens)
        batch_online = self.online_cost(backend, model, *batch_tokens)
        if online is None or batch_online is None:  # both or neither: the same price
            return dict.fromkeys(("online_cost_usd", "batch_cost_usd", "batch_saving_usd", "cost_usd"))
        batch_cost = batch_online * self.batch_discount
        saving = batch_online - batch_cost
        return {
            "online_cost_usd": online,
            "batch_cost_usd": batch_cost,
            "batch_saving_usd": saving,
            "cost_usd": online - saving,
        }


def _source(path: str | Path | None) -> Path:
    return Path(path) if path else Path(__file__).resolve().parent / "pricing.toml"


def _discount(data: dict) -> float:
    value = data.get("batch_discount", DEFAULT_BATCH_DISCOUNT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise DescgenError(
            f"batch_discount must be a number between 0 and 1 in the price table, not {value!r}"
        )
    return float(value)


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """The price table at ``path`` (default: the packaged one)."""
    import tomllib

    source = _source(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
        prices: dict[str, dict[str, float]] = {}
        for key, val in (data.get("models") or {}).items():
            if isinstance(val, dict) and "input" in val and "output" in val:
                prices[str(key)] = {"input": float(val["input"]), "output": float(val["output"])}
    except (OSError, ValueError, TypeError) as exc:  # TOMLDecodeError is a ValueError
        raise DescgenError(f"cannot read the price table: {exc}") from None
    return PriceTable(prices, _discount(data))
