"""Synthetic card transactions with fraud labels, and named drift scenarios: a data set for the
demo and the tests that behaves like the real thing (rare, learnable fraud; the same rows for the
same seed), without shipping or downloading one. docs/monitoring-design.md says how labels are made.
"""

from __future__ import annotations

import zlib
from typing import Final

import numpy as np
import pandas as pd

# --- the world the transactions live in -----------------------------------------------

CATEGORIES: Final[tuple[str, ...]] = (
    "grocery",
    "restaurants",
    "fuel",
    "travel",
    "electronics",
    "online_retail",
    "entertainment",
    "health",
)
COUNTRIES: Final[tuple[str, ...]] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA")
CHANNELS: Final[tuple[str, ...]] = ("pos", "online", "contactless")
DEVICES: Final[tuple[str, ...]] = ("chip", "swipe", "mobile_wallet", "web")

#: The category the ``new_merchant_category`` scenario introduces; never in a baseline frame.
UNSEEN_CATEGORY: Final[str] = "crypto_exchange"

#: Output columns, in order, with their dtypes.
COLUMNS: Final[dict[str, str]] = {
    "transaction_id": "object",
    "timestamp": "datetime64[ns]",
    "amount": "float64",
    "merchant_category": "object",
    "hour": "int64",
    "day_of_week": "int64",
    "country": "object",
    "channel": "object",
    "device": "object",
    "is_foreign": "int64",
    "customer_age_days": "int64",
    "customer_avg_amount_30d": "float64",
    "customer_tx_count_24h": "int64",
    "distance_from_home_km": "float64",
    "amount_to_avg_ratio": "float64",
    "is_fraud": "int64",
}
CATEGORICAL_COLUMNS: Final[tuple[str, ...]] = ("merchant_category", "country", "channel", "device")
LABEL_COLUMN: Final[str] = "is_fraud"
ID_COLUMN: Final[str] = "transaction_id"

SPAN_DAYS: Final[int] = 30

# category: share of transactions, median amount, log-normal sigma of the amount, chance the
# transaction is abroad (travel and cross-border shopping go abroad), probabilities of the
# channels (pos, online, contactless)
_CATEGORY_PROFILE: Final[dict[str, tuple[float, float, float, float, tuple[float, float, float]]]] = {
    "grocery": (0.24, 45.0, 0.60, 0.02, (0.45, 0.05, 0.50)),
    "restaurants": (0.18, 30.0, 0.55, 0.04, (0.40, 0.05, 0.55)),
    "fuel": (0.12, 50.0, 0.35, 0.03, (0.60, 0.00, 0.40)),
    "travel": (0.05, 350.0, 0.80, 0.30, (0.20, 0.70, 0.10)),
    "electronics": (0.06, 180.0, 0.90, 0.06, (0.40, 0.45, 0.15)),
    "online_retail": (0.17, 55.0, 0.80, 0.08, (0.00, 1.00, 0.00)),
    "entertainment": (0.10, 25.0, 0.70, 0.04, (0.30, 0.40, 0.30)),
    "health": (0.08, 40.0, 0.70, 0.01, (0.55, 0.10, 0.35)),
}
_HOME_COUNTRY_WEIGHTS: Final[tuple[float, ...]] = (0.35, 0.15, 0.12, 0.10, 0.08, 0.07, 0.05, 0.08)
# relative volume of transactions by hour of day: quiet nights, lunch and evening peaks
_HOUR_PROFILE: Final[tuple[float, ...]] = (
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.8, 4.2, 4.6, 5.2,
    6.2, 6.0, 5.2, 5.0, 5.4, 6.0, 6.6, 6.2, 5.0, 3.8, 2.6, 1.6,
)  # fmt: skip

# --- the fraud model (log-odds contributions) -----------------------------------------

_CATEGORY_RISK: Final[dict[str, float]] = {
    "grocery": -0.4,
    "restaurants": -0.2,
    "fuel": -0.3,
    "travel": 0.5,
    "electronics": 1.0,
    "online_retail": 0.6,
    "entertainment": 0.0,
    "health": -0.3,
    UNSEEN_CATEGORY: 1.8,
}
_NOISE_SD: Final[float] = 0.7


#: log-odds per unit of each risk factor (see ``_risk_score``)
_RISK_WEIGHTS: Final[dict[str, float]] = {
    "night": 1.6,  # 00:00-05:59
    "late_evening": 0.5,  # 22:00-23:59
    "foreign": 1.4,
    "online": 0.8,
    "web": 0.4,
    "chip": -0.4,
    "log_ratio": 1.1,  # log(amount / 30-day average), clipped to _LOG_RATIO_CLIP
    "account_under_60d": 1.5,
    "account_60_180d": 0.5,
    "tx_count_24h": 0.25,  # per transaction, counting at most _COUNT_CAP
    "log_distance": 0.1,  # log(1 + km from home)
}
_COUNT_CAP: Final[int] = 8
_LOG_RATIO_CLIP: Final[tuple[float, float]] = (-2.0, 3.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _risk_score(df: pd.DataFrame) -> np.ndarray:
    """The deterministic part of a row's fraud log-odds, without the intercept."""
    w = _RISK_WEIGHTS
    hour = df["hour"].to_numpy()
    ratio = df["amount_to_avg_ratio"].to_numpy(dtype=float)
    age = df["customer_age_days"].to_numpy()
    count = df["customer_tx_count_24h"].to_numpy()
    device = df["device"].to_numpy()
    score = (
        w["night"] * (hour <= 5)
        + w["late_evening"] * (hour >= 22)
        + w["foreign"] * df["is_foreign"].to_numpy()
        + w["online"] * (df["channel"].to_numpy() == "online")
        + w["web"] * (device == "web")
        + w["chip"] * (device == "chip")
        + w["log_ratio"] * np.clip(np.log(ratio), *_LOG_RATIO_CLIP)
        + w["account_under_60d"] * (age < 60)
        + w["account_60_180d"] * ((age >= 60) & (age < 180))
        + w["tx_count_24h"] * np.minimum(count, _COUNT_CAP)
        + w["log_distance"] * np.log1p(df["distance_from_home_km"].to_numpy(dtype=float))
        + df["merchant_category"].map(_CATEGORY_RISK).fillna(0.0).to_numpy(dtype=float)
    )
    return score.astype(float)


def _calibrate_intercept(score: np.ndarray, rate: float) -> float:
    """The intercept b with mean(sigmoid(score + b)) == rate, by bisection."""
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if _sigmoid(score + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


# --- generation -----------------------------------------------------------------------


def _strictly_increasing(ns: np.ndarray) -> np.ndarray:
    """Sorted int64 nanoseconds nudged by the fewest nanoseconds so no two are equal."""
    steps = np.arange(ns.size, dtype=np.int64)
    return np.maximum.accumulate(ns - steps) + steps


def _choice(rng: np.random.Generator, options: tuple[str, ...], probs: np.ndarray, size: int) -> np.ndarray:
    idx = rng.choice(len(options), size=size, p=probs / probs.sum())
    return np.asarray(options, dtype=object)[idx]


def _per_category_choice(
    rng: np.random.Generator, category: np.ndarray, table: dict[str, tuple[float, ...]], options: tuple[str, ...]
) -> np.ndarray:
    """For each row, draw one of ``options`` with its category's probabilities (vectorised)."""
    cats = list(table)
    cum = np.cumsum(np.array([table[c] for c in cats], dtype=float), axis=1)
    cum /= cum[:, -1:]
    row_cum = cum[pd.Index(cats).get_indexer(category)]
    u = rng.random(category.size)[:, None]
    idx = np.minimum((u >= row_cum).sum(axis=1), len(options) - 1)
    return np.asarray(options, dtype=object)[idx]


def _devices_for(rng: np.random.Generator, channel: np.ndarray) -> np.ndarray:
    u = rng.random(channel.size)
    return np.select(
        [channel == "pos", channel == "contactless"],
        [np.where(u < 0.85, "chip", "swipe"), np.where(u < 0.55, "mobile_wallet", "chip")],
        default=np.where(u < 0.70, "web", "mobile_wallet"),
    ).astype(object)


def _typical_amount() -> float:
    """The mean amount of an average customer, used to scale 30-day averages."""
    return float(sum(w * med * np.exp(s * s / 2.0) for w, med, s, _, _ in _CATEGORY_PROFILE.values()))


def _token(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def _transaction_ids(arguments: str, n: int) -> np.ndarray:
    """``tx-<token>-<n>``, the token from the generator's arguments: frames drawn with other
    arguments (the demo's calm and drifted populations) never share an id, so a label sent by id
    can only reach its own transaction."""
    token = _token(arguments)
    return np.array([f"tx-{token}-{i:09d}" for i in range(1, n + 1)], dtype=object)


def generate_transactions(
    n_rows: int = 20_000,
    seed: int = 42,
    fraud_rate: float = 0.015,
    start: str = "2026-01-01",
    scenario: str | None = None,
    scenario_strength: float = 1.0,
) -> pd.DataFrame:
    """``n_rows`` card transactions over 30 days from ``start``, with fraud labels.

    The same arguments always give the same frame. With ``scenario``, the baseline frame is
    generated first and the scenario applied to it, exactly as
    ``apply_scenario(generate_transactions(n_rows, seed, fraud_rate, start), scenario,
    strength=scenario_strength, seed=seed)``.
    """
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if not 0.0 < fraud_rate < 1.0:
        raise ValueError(f"fraud_rate must be strictly between 0 and 1, got {fraud_rate}")
    if scenario is not None and scenario not in SCENARIOS:
        raise ValueError(_unknown_scenario_message(scenario))
    origin = pd.Timestamp(start)
    if origin.tzinfo is not None:
        raise ValueError(f"start must be a naive timestamp, got {start!r}")

    rng = np.random.default_rng(seed)
    n = n_rows

    # customers: a pool each transaction is drawn from
    n_customers = max(50, n // 20)
    home = _choice(rng, COUNTRIES, np.array(_HOME_COUNTRY_WEIGHTS), n_customers)
    young = rng.random(n_customers) < 0.08
    age = np.where(
        young,
        rng.integers(1, 90, n_customers),
        np.clip(rng.lognormal(np.log(900.0), 0.7, n_customers), 90, 5_000).astype(np.int64),
    ).astype(np.int64)
    spend = rng.lognormal(0.0, 0.45, n_customers)
    activity = rng.gamma(2.0, 1.2, n_customers)
    cust = rng.integers(0, n_customers, n)

    # when: a uniform day, an hour from the daily profile, a uniform instant within the hour
    hour_p = np.array(_HOUR_PROFILE) / sum(_HOUR_PROFILE)
    day = rng.integers(0, SPAN_DAYS, n)
    hour_drawn = rng.choice(24, size=n, p=hour_p)
    within = rng.integers(0, 3_600_000, n).astype(np.int64) * 1_000_000  # millisecond resolution
    offset_ns = day.astype(np.int64) * 86_400_000_000_000 + hour_drawn.astype(np.int64) * 3_600_000_000_000 + within
    ns = _strictly_increasing(np.sort(offset_ns) + origin.value)
    timestamp = pd.to_datetime(ns).as_unit("ns")

    # what, where and how
    probs = np.array([p[0] for p in _CATEGORY_PROFILE.values()])
    category = _choice(rng, CATEGORIES, probs, n)
    median = pd.Series({c: p[1] for c, p in _CATEGORY_PROFILE.items()})[category].to_numpy()
    sigma = pd.Series({c: p[2] for c, p in _CATEGORY_PROFILE.items()})[category].to_numpy()
    amount = np.maximum(np.round(median * np.exp(sigma * rng.standard_normal(n)) * spend[cust], 2), 0.5)
    channel = _per_category_choice(rng, category, {c: p[4] for c, p in _CATEGORY_PROFILE.items()}, CHANNELS)
    device = _devices_for(rng, channel)

    foreign_p = pd.Series({c: p[3] for c, p in _CATEGORY_PROFILE.items()})[category].to_numpy()
    is_foreign = (rng.random(n) < foreign_p).astype(np.int64)
    home_row = home[cust]
    # a foreign country: one of the seven others, uniformly
    home_idx = pd.Index(COUNTRIES).get_indexer(home_row)
    other_idx = (home_idx + rng.integers(1, len(COUNTRIES), n)) % len(COUNTRIES)
    country = np.where(is_foreign == 1, np.asarray(COUNTRIES, dtype=object)[other_idx], home_row).astype(object)
    distance = np.where(
        is_foreign == 1,
        rng.lognormal(np.log(900.0), 0.7, n),
        rng.lognormal(np.log(6.0), 1.0, n),
    )
    distance = np.round(distance, 1)

    avg = np.maximum(np.round(_typical_amount() * spend[cust] * rng.lognormal(0.0, 0.2, n), 2), 1.0)
    count = rng.poisson(activity[cust]).astype(np.int64)

    df = pd.DataFrame(
        {
            "transaction_id": _transaction_ids(f"{n_rows}|{seed}|{fraud_rate!r}|{origin.isoformat()}", n),
            "timestamp": timestamp,
            "amount": amount.astype(float),
            "merchant_category": category,
            "hour": timestamp.hour.to_numpy().astype(np.int64),
            "day_of_week": timestamp.dayofweek.to_numpy().astype(np.int64),
            "country": country,
            "channel": channel,
            "device": device,
            "is_foreign": is_foreign,
            "customer_age_days": age[cust],
            "customer_avg_amount_30d": avg.astype(float),
            "customer_tx_count_24h": count,
            "distance_from_home_km": distance.astype(float),
            "amount_to_avg_ratio": amount / avg,
            "is_fraud": np.zeros(n, dtype=np.int64),
        }
    )

    # labels: logistic over the features plus noise, intercept calibrated to fraud_rate
    score = _risk_score(df) + _NOISE_SD * rng.standard_normal(n)
    intercept = _calibrate_intercept(score, fraud_rate)
    df["is_fraud"] = (rng.random(n) < _sigmoid(score + intercept)).astype(np.int64)

    df = df.astype(COLUMNS)
    if scenario is not None:
        df = apply_scenario(df, scenario, strength=scenario_strength, seed=seed)
    return df


# --- drift scenarios ------------------------------------------------------------------

SCENARIOS: Final[dict[str, str]] = {
    "new_fraud_pattern": "card-testing bursts (4% x strength of rows): tiny online/web amounts on established "
    "domestic cards, half of the bursts at night, many transactions in 24h, all fraud",
    "amount_shift": "all amounts (and 30-day averages) multiplied by 1 + 0.75 x strength, as after a currency change",
    "new_merchant_category": f"a share of rows (12% x strength) move to the unseen category '{UNSEEN_CATEGORY}', "
    "large online amounts with a much higher fraud rate",
    "channel_shift": "40% x strength of in-store transactions move to online or mobile-wallet contactless",
}


def _unknown_scenario_message(name: str) -> str:
    return f"unknown scenario {name!r}; valid scenarios: {', '.join(sorted(SCENARIOS))}"


def _relabel(
    before: pd.DataFrame, after: pd.DataFrame, changed: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Labels for ``after``: the rows in ``changed`` re-drawn through the fraud model.

    A coupling: a row whose risk went up becomes fraud with the extra probability, one whose
    risk went down stops being fraud with the lost probability, so the label's chance ends
    up at the new risk while rows whose risk did not move keep their label.
    """
    labels = before[LABEL_COLUMN].to_numpy().copy()
    rate = float(labels.mean())
    if not changed.any() or rate <= 0.0 or rate >= 1.0:
        return labels
    old_score = _risk_score(before)
    intercept = _calibrate_intercept(old_score, rate)
    p_old = _sigmoid(old_score[changed] + intercept)
    p_new = _sigmoid(_risk_score(after.loc[changed]) + intercept)
    y = labels[changed]
    u = rng.random(y.size)
    up = (y == 0) & (p_new > p_old) & (u < (p_new - p_old) / (1.0 - p_old))
    down = (y == 1) & (p_new < p_old) & (u < 1.0 - p_new / p_old)
    y = np.where(up, 1, np.where(down, 0, y))
    labels[changed] = y
    return labels


def _with_ratio(df: pd.DataFrame) -> pd.DataFrame:
    df["amount_to_avg_ratio"] = df["amount"] / df["customer_avg_amount_30d"]
    return df


def _amount_shift(df: pd.DataFrame, strength: float, rng: np.random.Generator) -> pd.DataFrame:
    factor = 1.0 + 0.75 * strength
    out = df.copy()
    out["amount"] = np.maximum(np.round(out["amount"] * factor, 2), 0.01)
    out["customer_avg_amount_30d"] = np.maximum(np.round(out["customer_avg_amount_30d"] * factor, 2), 0.01)
    return _with_ratio(out)


def _new_merchant_category(df: pd.DataFrame, strength: float, rng: np.random.Generator) -> pd.DataFrame:
    n = len(df)
    share = min(0.6, 0.12 * strength)
    changed = rng.random(n) < share
    k = int(changed.sum())
    out = df.copy()
    out.loc[changed, "merchant_category"] = UNSEEN_CATEGORY
    out.loc[changed, "channel"] = np.where(rng.random(k) < 0.9, "online", "contactless")
    out.loc[changed, "device"] = _devices_for(rng, out.loc[changed, "channel"].to_numpy())
    ratio = rng.lognormal(np.log(2.0), 0.9, k)
    avg = out.loc[changed, "customer_avg_amount_30d"].to_numpy()
    out.loc[changed, "amount"] = np.maximum(np.round(avg * ratio, 2), 1.0)
    out = _with_ratio(out)
    out[LABEL_COLUMN] = _relabel(df, out, changed, rng)
    return out


def _channel_shift(df: pd.DataFrame, strength: float, rng: np.random.Generator) -> pd.DataFrame:
    n = len(df)
    share = min(1.0, 0.4 * strength)
    in_store = df["channel"].to_numpy() != "online"
    changed = in_store & (rng.random(n) < share)
    can_go_online = df["merchant_category"].to_numpy() != "fuel"
    to_online = changed & can_go_online & (rng.random(n) < 0.7)
    to_wallet = changed & ~to_online
    out = df.copy()
    out.loc[to_online, "channel"] = "online"
    out.loc[to_online, "device"] = np.where(rng.random(int(to_online.sum())) < 0.6, "web", "mobile_wallet")
    out.loc[to_wallet, "channel"] = "contactless"
    out.loc[to_wallet, "device"] = "mobile_wallet"
    out[LABEL_COLUMN] = _relabel(df, out, changed, rng)
    return out


# new_fraud_pattern: share of bursts that start between midnight and 5am (the rest start
# between 6am and 11pm), the attacker's extra transactions in the card's 24h count before a
# burst, and the youngest account age (days) of an attacked card
_ATTACK_NIGHT_SHARE: Final[float] = 0.5
_ATTACK_COUNT_EXTRA: Final[int] = 1
_ATTACK_MIN_AGE: Final[int] = 365


def _new_fraud_pattern(df: pd.DataFrame, strength: float, rng: np.random.Generator) -> pd.DataFrame:
    n = len(df)
    n_attack = min(int(round(0.04 * strength * n)), n // 2)
    out = df.copy()
    if n_attack == 0:
        return out
    # stolen numbers of established domestic cards: nothing about the card itself looks risky
    established = (
        (df[LABEL_COLUMN].to_numpy() == 0)
        & (df["is_foreign"].to_numpy() == 0)
        & (df["customer_age_days"].to_numpy() >= _ATTACK_MIN_AGE)
    )
    candidates = np.flatnonzero(established)
    rows = rng.permutation(candidates)[: min(n_attack, candidates.size)]
    if rows.size == 0:
        return out
    # split the chosen rows into bursts of 4..12 on one card each
    sizes: list[int] = []
    while sum(sizes) < rows.size:
        sizes.append(int(rng.integers(4, 13)))
    sizes[-1] -= sum(sizes) - rows.size
    starts = np.cumsum([0, *sizes[:-1]])
    burst = np.repeat(np.arange(len(sizes)), sizes)
    position = np.arange(rows.size) - np.repeat(starts, sizes)
    anchor = rows[np.repeat(starts, sizes)]

    ts = df["timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    day_ns = 86_400_000_000_000
    n_bursts = len(sizes)
    night = rng.random(n_bursts) < _ATTACK_NIGHT_SHARE
    start_hour = np.where(night, rng.random(n_bursts) * 5.0, 6.0 + rng.random(n_bursts) * 17.0)
    burst_start = (ts[anchor] // day_ns) * day_ns + (start_hour * 3_600e9).astype(np.int64)[burst]
    gaps = rng.integers(20, 180, rows.size) * 1_000_000_000
    gaps[position == 0] = 0
    new_ts = burst_start + _cumsum_within(gaps, starts, sizes)

    card_cols = ["country", "is_foreign", "customer_age_days", "customer_avg_amount_30d", "distance_from_home_km"]
    for col in card_cols:
        out.loc[rows, col] = df[col].to_numpy()[anchor]
    count_before = df["customer_tx_count_24h"].to_numpy()[anchor]
    out.loc[rows, "customer_tx_count_24h"] = count_before + position + _ATTACK_COUNT_EXTRA
    out.loc[rows, "amount"] = np.round(rng.uniform(0.5, 5.0, rows.size), 2)
    out.loc[rows, "merchant_category"] = _choice(
        rng, ("entertainment", "grocery", "health", "restaurants"), np.array([0.4, 0.25, 0.2, 0.15]), rows.size
    )
    out.loc[rows, "channel"] = "online"
    out.loc[rows, "device"] = "web"
    out.loc[rows, LABEL_COLUMN] = 1

    all_ts = ts.copy()
    all_ts[rows] = new_ts
    order = np.argsort(all_ts, kind="stable")
    out = out.iloc[order].reset_index(drop=True)
    stamp = pd.to_datetime(_strictly_increasing(all_ts[order])).as_unit("ns")
    out["timestamp"] = stamp
    out["hour"] = stamp.hour.to_numpy().astype(np.int64)
    out["day_of_week"] = stamp.dayofweek.to_numpy().astype(np.int64)
    return _with_ratio(out)


def _cumsum_within(values: np.ndarray, starts: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Cumulative sums restarting at each group of consecutive rows."""
    total = np.cumsum(values)
    before = np.repeat(total[starts] - values[starts], sizes)
    return total - before


_APPLIERS = {
    "new_fraud_pattern": _new_fraud_pattern,
    "amount_shift": _amount_shift,
    "new_merchant_category": _new_merchant_category,
    "channel_shift": _channel_shift,
}


def apply_scenario(df: pd.DataFrame, name: str, strength: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """A new frame: ``df`` with the drift scenario ``name`` applied; ``df`` is left unchanged.

    Rows keep their index, except under ``new_fraud_pattern``, which moves rows in time and
    returns them re-sorted by ``timestamp`` with a fresh RangeIndex.

    ``strength`` scales the scenario (0 changes nothing, 1 is the documented default);
    ``seed`` drives its random choices, so the same arguments give the same frame. Transaction
    ids get the scenario's suffix (strength above 0): a drifted row is another transaction.
    """
    if name not in SCENARIOS:
        raise ValueError(_unknown_scenario_message(name))
    if strength < 0:
        raise ValueError(f"strength must be non-negative, got {strength}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a transactions frame: missing columns {missing}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = _APPLIERS[name](df.reset_index(drop=True), float(strength), rng)
    if strength > 0:
        out[ID_COLUMN] = out[ID_COLUMN] + f"-{name}-{_token(f'{float(strength)!r}|{seed}')}"
    if name != "new_fraud_pattern":  # the only scenario that re-orders rows (by time)
        out.index = df.index
    return out[list(COLUMNS)].astype(COLUMNS)
