"""Training curves as PNG images, and what they say, written down.

    frame = read_metrics("runs/ppo/metrics.jsonl")       # one row per logged step
    write_curves(frame, "runs/ppo/curves")                # reward.png, kl.png, gold.png, ...
    for d in diagnose_frame(frame):
        print(d.severity, d.message)

The diagnostics put the RLHF course's rule of thumb into numbers: *the reward and the
KL to the reference model should both rise and then level off.* A reward still
rising at the end means more steps would help; one that levelled off very early
means fewer steps (or epochs) would do; KL that keeps climbing while the reward
hardly moves is the classic sign of reward hacking (the policy drifts to where the
reward model is wrong). With a gold score (Tinyworld's oracle, or human ratings)
there is a fourth, direct check: the gold score falling while the proxy reward
rises is reward-model over-optimisation (Gao et al. 2022, arXiv 2210.10760, Fig. 1).

:func:`diagnose` is a pure function over plain series; every threshold it uses is a
field of :class:`Thresholds`, documented there and tested on synthetic curves in
``tests/test_evaluate_curves.py``. Curves are smoothed with a centred moving average
before they are read, and a change counts only when it exceeds a few standard
deviations of the step-to-step noise around that average.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no
pyplot, so no global backend is switched), imported only when a figure is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# metrics.jsonl keys of the PPO stage (rlxf.stages.ppo) that the figures and diagnostics read
PROXY, KL = "score", "kl"


@dataclass(frozen=True)
class Thresholds:
    """Every number the diagnostics compare against. "Rise" is the smoothed curve's
    highest value minus its first value; shares of steps are of the logged step range."""

    smooth: float = 0.05
    """Width of the centred moving average, as a share of the logged points (at least 1 point)."""
    min_rise: float = 3.0
    """A change counts only when it exceeds this many standard deviations of the noise (raw minus
    smoothed; for the tail's trend, its standard error)."""
    level: float = 0.9
    """A curve has levelled off once its smoothed value has made this share of its rise."""
    early: float = 0.25
    """Levelled off within this share of the steps: fewer steps or epochs would do."""
    tail: float = 0.2
    """The final share of the steps whose linear trend decides whether a curve is still rising."""
    still_rising: float = 0.1
    """Still rising: the tail's linear trend adds at least this share of the rise, and more than
    ``min_rise`` standard errors of that trend (under-trained)."""
    kl_late: float = 0.5
    """Hacking warning: KL made at least this share of its rise in the second half of the steps ..."""
    kl_speedup: float = 2.0
    """... and the reward gained per nat of KL there is at most 1/this of the first half's."""
    gold_drop: float = 0.1
    """Over-optimisation: gold fell from its peak by at least this share of its range (max - min) ..."""
    proxy_after_peak: float = 0.1
    """... while the proxy reward kept rising after gold's peak by at least this share of its rise."""
    min_points: int = 8
    """Fewer logged points than this: no verdict (log more often with log_every)."""


@dataclass(frozen=True)
class Diagnosis:
    """One finding. ``verdict`` is a stable code, ``severity`` one of "ok", "info",
    "warning"; ``message`` is a sentence for people; ``numbers`` holds what it is based on."""

    verdict: str
    severity: str
    message: str
    numbers: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- diagnostics

def diagnose(steps: Sequence[float], reward: Sequence[float], kl: Sequence[float] | None = None,
             gold: Sequence[float] | None = None, *, thresholds: Thresholds = Thresholds(),
             reward_name: str = "reward") -> list[Diagnosis]:
    """What the curves say, as a list of :class:`Diagnosis`.

    ``reward``, ``kl`` and ``gold`` are values at ``steps`` (same length; pass
    ``None`` for a series that was not logged). Verdicts:

    - reward shape, exactly one of: ``no-rise`` (warning), ``under-trained`` (still
      rising at the end; info), ``plateau-early`` (levelled off within the first
      ``early`` share of the steps; info), ``converged`` (rose, then levelled off; ok);
    - ``reward-hacking`` (warning): KL climbing fast late in the run, each nat of it
      buying much less reward than before;
    - ``over-optimisation`` (warning): gold fell from its peak while the proxy rose;
    - ``too-few-points`` alone when fewer than ``min_points`` points were logged.
    """
    t = thresholds
    x = np.asarray(steps, dtype=float)
    r = np.asarray(reward, dtype=float)
    if len(x) != len(r) or any(s is not None and len(s) != len(x) for s in (kl, gold)):
        raise ValueError("steps, reward, kl and gold must have the same length")
    if len(x) < t.min_points:
        return [Diagnosis("too-few-points", "info",
                          f"only {len(x)} logged steps (fewer than {t.min_points}); log more often "
                          "(log_every) to get a diagnosis", {"points": len(x)})]
    out = [_reward_shape(x, r, t, reward_name)]
    if kl is not None:
        out += _hacking(x, r, np.asarray(kl, dtype=float), t, reward_name)
    if gold is not None:
        out += _over_optimisation(x, r, np.asarray(gold, dtype=float), t, reward_name)
    return out


@dataclass(frozen=True)
class _Curve:
    """A series read the way the diagnostics read it."""

    smooth: np.ndarray  # (N,) centred moving average
    noise: float  # std of raw - smooth
    rise: float  # max(smooth) - smooth[0]

    def rose(self, t: Thresholds) -> bool:
        return self.rise > max(t.min_rise * self.noise, 1e-12 * (1.0 + abs(float(self.smooth[0]))))


def _read(values: np.ndarray, t: Thresholds) -> _Curve:
    s = moving_average(values, max(1, round(t.smooth * len(values))))
    return _Curve(s, float(np.std(values - s)), float(s.max() - s[0]))


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average of ``window`` points; near the ends the window shrinks to
    the points that exist, so the curve keeps its length and its end values."""
    v = np.asarray(values, dtype=float)
    kernel = np.ones(window)
    return np.convolve(v, kernel, mode="same") / np.convolve(np.ones_like(v), kernel, mode="same")


def _share_of_steps(x: np.ndarray, i: int) -> float:
    return float((x[i] - x[0]) / (x[-1] - x[0])) if x[-1] > x[0] else 1.0


def _tail_trend(x: np.ndarray, values: np.ndarray, t: Thresholds) -> tuple[float, float]:
    """What the least-squares line over the last ``tail`` share of the steps adds across
    that stretch, and the standard error of that amount (from the line's residuals)."""
    keep = x >= x[-1] - t.tail * (x[-1] - x[0])
    xs, ys = x[keep], values[keep]
    if len(xs) < 3:
        return 0.0, math.inf
    sxx = float(((xs - xs.mean()) ** 2).sum())
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum()) / sxx
    residual = ys - (ys.mean() + slope * (xs - xs.mean()))
    se_slope = math.sqrt(float((residual ** 2).sum()) / (len(xs) - 2) / sxx)
    width = float(xs[-1] - xs[0])
    return slope * width, se_slope * width


def _reward_shape(x: np.ndarray, r: np.ndarray, t: Thresholds, name: str) -> Diagnosis:
    c = _read(r, t)
    first = float(c.smooth[0])
    # where the curve ends up: the mean of its smoothed tail (robust to a noisy last point)
    final = float(c.smooth[x >= x[-1] - t.tail * (x[-1] - x[0])].mean())
    gain = final - first
    if not gain > max(t.min_rise * c.noise, 1e-12 * (1.0 + abs(first))):
        return Diagnosis("no-rise", "warning",
                         f"the {name} did not rise (smoothed: {first:.3g} at the start, {final:.3g} at the end; "
                         f"noise {c.noise:.2g}): check the learning rate, the reward model and kl.coef",
                         {"gain": gain, "noise": c.noise})
    level_i = int(np.argmax(c.smooth >= first + t.level * gain))
    level_at = _share_of_steps(x, level_i)
    tail, tail_se = _tail_trend(x, r, t)
    numbers = {"gain": gain, "noise": c.noise, "level_step": float(x[level_i]), "level_share": level_at,
               "tail_gain_share": tail / gain}
    if tail >= t.still_rising * gain and tail > t.min_rise * tail_se:
        return Diagnosis("under-trained", "info",
                         f"the {name} is still rising at the end: over the last {t.tail:.0%} of the steps it "
                         f"gained {tail / gain:.0%} of its total rise ({first:.3g} → {final:.3g}); "
                         "more steps would help", numbers)
    if level_at <= t.early:
        return Diagnosis("plateau-early", "info",
                         f"the {name} levelled off early: it made {t.level:.0%} of its rise ({first:.3g} → "
                         f"{final:.3g}) by step {x[level_i]:g}, {level_at:.0%} of the way through; "
                         "fewer steps (or epochs) would do", numbers)
    return Diagnosis("converged", "ok",
                     f"the {name} rose ({first:.3g} → {final:.3g}) and levelled off "
                     f"{level_at:.0%} of the way through (step {x[level_i]:g}): the shape the rule of thumb asks for",
                     numbers)


def _hacking(x: np.ndarray, r: np.ndarray, kl: np.ndarray, t: Thresholds, name: str) -> list[Diagnosis]:
    """KL climbing fast while the reward does not keep pace, either way round:

    1. KL made most of its rise late, and there each nat of KL bought much less reward
       than in the first half (``kl_late``, ``kl_speedup``);
    2. KL is still rising at the end while the reward has levelled off (the tail test
       of :func:`_reward_shape`, ``tail`` and ``still_rising``, applied to both).
    """
    cr, ck = _read(r, t), _read(kl, t)
    if not (cr.rose(t) and ck.rose(t)):
        return []
    mid = int(np.searchsorted(x, x[0] + (x[-1] - x[0]) / 2))
    kl_first = max(float(ck.smooth[mid] - ck.smooth[0]), 0.0)
    kl_second = float(ck.smooth[-1] - ck.smooth[mid])
    reward_first = float(cr.smooth[mid] - cr.smooth[0])
    reward_second = max(float(cr.smooth[-1] - cr.smooth[mid]), 0.0)
    kl_late = kl_second / ck.rise
    numbers = {"kl_late_share": kl_late}
    # reward per nat, second half vs first half, cross-multiplied (no division by a flat KL):
    # (reward_second / kl_second) <= (reward_first / kl_first) / kl_speedup
    costlier = reward_first > 0 and t.kl_speedup * reward_second * kl_first <= reward_first * kl_second
    if kl_late >= t.kl_late and costlier:
        per_nat = (reward_first / kl_first) / (reward_second / kl_second) if reward_second > 0 and kl_first > 0 \
            else math.inf
        slower = f"{per_nat:.1f} times less" if math.isfinite(per_nat) else "next to no"
        return [Diagnosis("reward-hacking", "warning",
                          f"KL is climbing fast: it made {kl_late:.0%} of its rise in the second half of the steps "
                          f"(to {ck.smooth[-1]:.3g} nats), and there each nat of KL bought {slower} {name} than "
                          f"in the first half; {_HACKING_ADVICE}", {**numbers, "reward_per_kl_drop": per_nat})]
    kl_tail, kl_se = _tail_trend(x, kl, t)
    reward_tail, reward_se = _tail_trend(x, r, t)
    kl_rising = kl_tail >= t.still_rising * ck.rise and kl_tail > t.min_rise * kl_se
    reward_rising = reward_tail >= t.still_rising * cr.rise and reward_tail > t.min_rise * reward_se
    if kl_rising and not reward_rising:
        return [Diagnosis("reward-hacking", "warning",
                          f"KL is still climbing at the end ({kl_tail / ck.rise:.0%} of its rise in the last "
                          f"{t.tail:.0%} of the steps, to {ck.smooth[-1]:.3g} nats) although the {name} has "
                          f"levelled off; {_HACKING_ADVICE}",
                          {**numbers, "kl_tail_share": kl_tail / ck.rise, "reward_tail_share": reward_tail / cr.rise})]
    return []


_HACKING_ADVICE = ("the policy keeps moving away from the reference model for little reward: watch for reward "
                   "hacking (read the answers and the gold score, if any; raise kl.coef or set a KL target)")


def _over_optimisation(x: np.ndarray, proxy: np.ndarray, gold: np.ndarray, t: Thresholds,
                       name: str) -> list[Diagnosis]:
    cp, cg = _read(proxy, t), _read(gold, t)
    spread = float(cg.smooth.max() - cg.smooth.min())
    peak = int(np.argmax(cg.smooth))
    drop = float(cg.smooth[peak] - cg.smooth[-1])
    proxy_after = float(cp.smooth[-1] - cp.smooth[peak])
    if (cp.rose(t) and drop > t.min_rise * cg.noise and drop >= t.gold_drop * spread and spread > 0
            and proxy_after >= t.proxy_after_peak * cp.rise):
        return [Diagnosis("over-optimisation", "warning",
                          f"over-optimisation: the gold score peaked at step {x[peak]:g} ({cg.smooth[peak]:.3g}) "
                          f"and fell to {cg.smooth[-1]:.3g} while the {name} kept rising "
                          f"(+{proxy_after:.3g}); the policy is exploiting the reward model: stop near step "
                          f"{x[peak]:g}, raise kl.coef, or train the reward model on more data",
                          {"gold_peak_step": float(x[peak]), "gold_drop": drop, "proxy_after_peak": proxy_after})]
    return []


# ----------------------------------------------------------------------------- metrics.jsonl

def read_metrics(path: str | Path):
    """``metrics.jsonl`` as a pandas DataFrame, one row per logged step, sorted by step."""
    import pandas as pd

    from rlxf.runs import read_metrics_rows

    frame = pd.DataFrame(read_metrics_rows(path))
    return frame.sort_values("step", kind="stable").reset_index(drop=True) if "step" in frame else frame


def series(frame, key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of ``key``, skipping rows that did not log it."""
    if key not in frame:
        return [], []
    rows = frame[["step", key]].dropna()
    return rows["step"].astype(float).tolist(), rows[key].astype(float).tolist()


def diagnose_frame(frame, *, gold_key: str = "gold", thresholds: Thresholds = Thresholds()) -> list[Diagnosis]:
    """:func:`diagnose` on a PPO run's metrics: the reward-model ``score``, ``kl`` and,
    when logged, ``gold_key``; ``[]`` for a run without a ``score`` (not an RL run)."""
    if PROXY not in frame:
        return []
    keys = [PROXY] + [k for k in (KL, gold_key) if k in frame]
    rows = frame[["step"] + keys].dropna()
    return diagnose(rows["step"].tolist(), rows[PROXY].tolist(), rows[KL].tolist() if KL in keys else None,
                    rows[gold_key].tolist() if gold_key in keys else None, thresholds=thresholds,
                    reward_name="reward-model score")


# ----------------------------------------------------------------------------- figures

@dataclass(frozen=True)
class Figure:
    """One rendered plot: a file-name stem, a caption for people, and PNG bytes."""

    name: str
    caption: str
    png: bytes


def figures(frame, *, gold_key: str = "gold", reward: str = "reward-model score") -> list[Figure]:
    """The plots a run's metrics call for.

    An RL run (it logs ``score``): ``reward`` (the score it optimised, called ``reward``:
    a reward model's or a reward function's, with the held-out ``eval_score``), ``kl``, and
    with a gold score ``gold`` and ``overoptimisation`` (proxy and gold on one figure, two
    y-axes). Any other run: ``loss`` and ``accuracy`` with their ``eval_`` counterparts,
    where logged.
    """
    out = []
    if PROXY in frame:
        out.append(_line_figure("reward", frame, [(PROXY, f"{reward} (training samples)"),
                                                  ("eval_score", f"{reward} (held-out prompts)")],
                                reward, f"{reward[0].upper()}{reward[1:]} per PPO step"))
        if KL in frame:
            out.append(_line_figure("kl", frame, [(KL, "KL to the reference model")], "KL (nats per answer)",
                                    "KL divergence from the reference (SFT) model per step"))
        if gold_key in frame or f"eval_{gold_key}" in frame:
            title = "Gold score per step" + ("" if gold_key == "gold" else f" ({gold_key})")
            out.append(_line_figure("gold", frame, [(gold_key, f"{gold_key} (training samples)"),
                                                    (f"eval_{gold_key}", f"{gold_key} (held-out prompts)")],
                                    f"{gold_key} score", title))
            if gold_key in frame:
                out.append(_twin_figure(frame, PROXY, gold_key, reward))
        return out
    for key in ("loss", "accuracy"):
        lines = [(k, k.replace("_", " ")) for k in (key, f"eval_{key}") if k in frame]
        if lines:
            out.append(_line_figure(key, frame, lines, key, f"{key.capitalize()} per step"))
    return out


def write_curves(frame_or_path, out_dir: str | Path, *, gold_key: str = "gold",
                 reward: str = "reward-model score") -> list[Path]:
    """Write :func:`figures` as ``out_dir/<name>.png``; returns the paths."""
    frame = read_metrics(frame_or_path) if isinstance(frame_or_path, (str, Path)) else frame_or_path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig in figures(frame, gold_key=gold_key, reward=reward):
        path = out / f"{fig.name}.png"
        path.write_bytes(fig.png)
        paths.append(path)
    return paths


_COLORS = ("#1f5f99", "#d9822b", "#2e8540", "#8e44ad")


def _canvas(title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _plot(ax, frame, key: str, label: str, color: str) -> None:
    x, y = series(frame, key)
    if not x:
        return
    if len(x) <= 12 or key.startswith("eval_"):  # sparse points: markers, no smoothing
        ax.plot(x, y, marker="o", color=color, label=label, linestyle="--" if key.startswith("eval_") else "-")
        return
    ax.plot(x, y, color=color, alpha=0.3, linewidth=1)
    window = max(1, round(Thresholds().smooth * len(y)))
    ax.plot(x, moving_average(y, window), color=color, linewidth=2, label=f"{label}, smoothed")


def _line_figure(name: str, frame, lines: list[tuple[str, str]], ylabel: str, title: str) -> Figure:
    fig, ax = _canvas(title)
    drawn = [(k, label) for k, label in lines if series(frame, k)[0]]
    for i, (key, label) in enumerate(drawn):
        _plot(ax, frame, key, label, _COLORS[i % len(_COLORS)])
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    caption = title + " (" + "; ".join(label for _, label in drawn) + ")"
    return Figure(name, caption, _png(fig))


def _twin_figure(frame, proxy: str, gold: str, reward: str) -> Figure:
    """Proxy and gold on one figure, each on its own y-axis (Gao et al. 2022, Fig. 1)."""
    title = "Over-optimisation check: proxy reward vs gold score"
    fig, ax = _canvas(title)
    _plot(ax, frame, proxy, f"{reward} (proxy)", _COLORS[0])
    ax.set_ylabel(f"{reward} (proxy)", color=_COLORS[0])
    right = ax.twinx()
    _plot(right, frame, gold, f"{gold} score", _COLORS[1])
    right.set_ylabel(f"{gold} score", color=_COLORS[1])
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best")
    caption = (f"{title}: if the gold score turns down while the proxy keeps rising, the policy is "
               "exploiting the reward model")
    return Figure("overoptimisation", caption, _png(fig))
