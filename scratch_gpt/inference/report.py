"""The pictures and the page of `scratch-gpt inspect`, drawn from the numbers of `inspect.inspect_text`.

`summary(numbers)` is the terminal's text. `pictures(numbers)` draws the PNGs with matplotlib (its
object API, no pyplot: no global state, safe in the web page's worker threads). `report_body(numbers, images)` is the report as one HTML
fragment: its CSS inline and scoped to `.inspect-report`, its images as data: URIs, its numbers as
JSON in `<script type="application/json" id="data">`; the web page's Inspect tab shows this fragment,
and `report_html` wraps it into report.html, a file that opens offline (no CDN, no request at all).
"""

import base64
import html
import io
import json
import warnings
from pathlib import Path


MASKED = "#d9d9d9"  # the causal mask: cells a position may not read, drawn grey (not white, which is weight 0)


def figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, 40), min(height, 40)))


def png(fig) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a token in a script the font lacks is drawn as a box, not warned about
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def label(token: dict, width: int = 10) -> str:
    text = shown(token["text"])
    return text if len(text) <= width else text[: width - 1] + "…"


def heatmap(axis, weights, colormap="Blues"):
    """Attention weights (T x T) with the cells above the diagonal (the causal mask) drawn grey."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm

    values = np.array(weights)
    masked = np.ma.masked_where(np.triu(np.ones_like(values, dtype=bool), k=1), values)
    cmap = colormaps[colormap].with_extremes(bad=MASKED)
    # A square-root colour scale: the many small weights of a long prompt stay visible (the colour bar shows the true values).
    return axis.imshow(masked, cmap=cmap, norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")


def draw_attention_grid(numbers: dict) -> bytes:
    layers, heads = numbers["attention"], numbers["heads"]
    fig = figure(1.7 * len(heads) + 0.6, 1.7 * len(layers) + 0.4)
    axes = fig.subplots(len(layers), len(heads), squeeze=False)
    for row, layer in zip(axes, layers):
        for axis, head, weights in zip(row, heads, layer["heads"]):
            heatmap(axis, weights)
            axis.set_title(f"layer {layer['layer']} head {head}", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    return png(fig)


def draw_head(numbers: dict) -> bytes:
    picked = numbers["picked"]
    layer = next(layer for layer in numbers["attention"] if layer["layer"] == picked["layer"])
    weights = layer["heads"][numbers["heads"].index(picked["head"])]
    labels = [f"{label(t)} {i}" for i, t in enumerate(numbers["tokens"])]
    size = max(5.0, 0.38 * len(labels) + 2)
    fig = figure(size + 1, size)
    axis = fig.subplots()
    image = heatmap(axis, weights)
    axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xlabel("key: the position read")
    axis.set_ylabel("query: the position reading (each row sums to 1)")
    axis.set_title(f"layer {picked['layer']}, head {picked['head']} (grey: the causal mask)")
    if len(labels) <= 24:
        for q, row in enumerate(weights):
            for k in range(q + 1):
                axis.text(k, q, f"{row[k]:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if row[k] > 0.35 else "black")  # fmt: skip
    fig.colorbar(image, ax=axis, fraction=0.04)
    return png(fig)


def draw_logit_lens(numbers: dict) -> bytes:
    """One row per input token, one column per layer (the numbers hold it the other way round: a row per
    layer); a long prompt then grows the picture downwards, and the page stays readable."""
    rows, tokens = numbers["logit_lens"]["rows"], numbers["tokens"]
    fig = figure(1.2 * len(rows) + 3.5, 0.3 * len(tokens) + 2)
    axis = fig.subplots()
    probabilities = [[row["cells"][t]["probability"] for row in rows] for t in range(len(tokens))]
    image = axis.imshow(probabilities, cmap="YlGn", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for r, row in enumerate(rows):
        for t, cell in enumerate(row["cells"]):
            said = cell["label"] if "label" in cell else label(cell, 10)
            axis.text(r, t, said, ha="center", va="center", fontsize=8, color="white" if cell["probability"] > 0.6 else "black")
    axis.set_yticks(range(len(tokens)), [f"{label(t)} {i}" for i, t in enumerate(tokens)], fontsize=8)
    axis.set_xticks(range(len(rows)), [row["name"].replace(" + ", "\n+ ") for row in rows], fontsize=8)
    axis.xaxis.tick_top()
    axis.set_ylabel("input token (each cell: what the layer predicts from it)")
    axis.set_xlabel("final norm + head on each layer's hidden state; the last column is the model's own prediction")
    fig.colorbar(image, ax=axis, fraction=0.04, label="probability")
    return png(fig)


def draw_next_token(numbers: dict) -> bytes:
    rows, tokens = numbers["next_token"][:-1], numbers["tokens"]
    fig = figure(0.45 * len(rows) + 3, 4)
    axis = fig.subplots()
    losses = [row["actual"]["loss"] for row in rows]
    hits = [row["actual"]["id"] == row["top"][0]["id"] for row in rows]
    axis.bar(range(len(rows)), losses, color=["#2a9d8f" if hit else "#e76f51" for hit in hits])
    names = [f"{label(tokens[t], 8)} → {label(row['actual'], 8)}" for t, row in enumerate(rows)]
    axis.set_xticks(range(len(rows)), names, rotation=90, fontsize=8)
    axis.set_ylabel("loss of the actual next token (nats)")
    axis.set_title(f"next token (green: it was the likeliest; mean loss {numbers['mean_loss']:.2f})", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    return png(fig)


def draw_classes(numbers: dict) -> bytes:
    classes = numbers["classes"]
    fig = figure(5, 0.5 * len(classes) + 1)
    axis = fig.subplots()
    axis.barh([c["label"] for c in classes], [c["probability"] for c in classes], color="#457b9d")
    axis.set_xlim(0, 1)
    axis.set_xlabel("probability")
    axis.invert_yaxis()
    return png(fig)


def pictures(numbers: dict) -> dict[str, bytes]:
    """File name -> PNG, for every picture of the report."""
    drawn = {"attention.png": draw_attention_grid(numbers), "attention_head.png": draw_head(numbers)}
    drawn["logit_lens.png"] = draw_logit_lens(numbers)
    if numbers["kind"] == "classifier":
        drawn["classes.png"] = draw_classes(numbers)
    elif len(numbers["tokens"]) > 1:
        drawn["next_token.png"] = draw_next_token(numbers)
    return drawn


# ----------------------------------------------------------------------------------------------
# The page

STYLE = """
.inspect-report { font-family: system-ui, sans-serif; color: #1d1d1d; max-width: 1200px; }
.inspect-report h1 { font-size: 1.4em; }
.inspect-report h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; padding-top: .6em; }
.inspect-report section { margin-bottom: 1.2em; }
.inspect-report .note { color: #555; font-size: .9em; }
.inspect-report .chips { display: flex; flex-wrap: wrap; gap: 4px; }
.inspect-report .chip { display: inline-flex; flex-direction: column; align-items: center; padding: 3px 6px;
  border-radius: 5px; font-family: ui-monospace, monospace; cursor: pointer; border: 2px solid transparent; }
.inspect-report .chip b { font-weight: 600; white-space: pre; }
.inspect-report .chip small { font-size: .7em; color: #444; }
.inspect-report .chip.pooled { border-color: #d62828; }
.inspect-report table { border-collapse: collapse; font-size: .85em; }
.inspect-report td, .inspect-report th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
.inspect-report td.num { text-align: right; font-variant-numeric: tabular-nums; }
.inspect-report tr.lit { background: #fff3b0; }
.inspect-report code { white-space: pre; }
.inspect-report img { max-width: 100%; }
.inspect-report .bar { display: inline-block; height: .8em; background: #457b9d; }
"""

# Clicking a token chip marks its row in the next-token table (the page needs no script to be read).
SCRIPT = """
document.querySelectorAll('.inspect-report .chip').forEach(function (chip) {
  chip.addEventListener('click', function () {
    document.querySelectorAll('.inspect-report tr.lit').forEach(function (row) { row.classList.remove('lit'); });
    var row = document.getElementById('next-' + chip.dataset.position);
    if (row) { row.classList.add('lit'); row.scrollIntoView({block: 'center'}); }
  });
});
"""

CHIP_COLOURS = ("#cde7f0", "#fde2c8", "#d8f0d2", "#f3d6ea", "#fff1b8", "#e0dcf5")


def esc(text) -> str:
    return html.escape(str(text))


def code(token: dict) -> str:
    return f"<code>{esc(shown(token['text']))}</code>"


def image(images: dict, name: str, alt: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def tokens_section(numbers: dict) -> str:
    pooled = numbers.get("pooled_position")
    chips = []
    for t, token in enumerate(numbers["tokens"]):
        colour = CHIP_COLOURS[t % len(CHIP_COLOURS)]
        mark = " pooled" if t == pooled else ""
        chips.append(
            f'<span class="chip{mark}" style="background:{colour}" data-position="{t}" title="position {t}, bytes '
            f'{esc(token["bytes"])}"><b>{esc(shown(token["text"]))}</b><small>{token["id"]}</small>'
            f"<small>{esc(token['bytes'])}</small></span>"
        )
    note = f"{len(chips)} tokens; each chip: the text (␣ a space, ↵ a line break), the id, the bytes in hex."
    if pooled is not None:
        note += " The red chip is the token the classifier pools."
    return f'<section id="tokens"><h2>Tokens</h2><p class="note">{note}</p><div class="chips">{"".join(chips)}</div></section>'


def next_token_section(numbers: dict, images: dict) -> str:
    header = "<tr><th>#</th><th>token</th><th>actual next</th><th>p</th><th>loss</th><th>top-k next (p)</th></tr>"
    rows = []
    for t, (token, row) in enumerate(zip(numbers["tokens"], numbers["next_token"])):
        actual = row.get("actual")
        cells = [code(actual), f'{actual["probability"]:.4f}', f'{actual["loss"]:.3f}'] if actual else ["–", "", ""]
        top = " ".join(f'{code(c)}&nbsp;{c["probability"]:.3f}' for c in row["top"])
        rows.append(
            f'<tr id="next-{t}"><td class="num">{t}</td><td>{code(token)}</td><td>{cells[0]}</td>'
            f'<td class="num">{cells[1]}</td><td class="num">{cells[2]}</td><td>{top}</td></tr>'
        )
    picture = image(images, "next_token.png", "loss of each actual next token") if "next_token.png" in images else ""
    mean = f"Mean loss of the actual next tokens: {numbers['mean_loss']:.3f} nats." if numbers["mean_loss"] is not None else ""
    return (
        f'<section id="next-token"><h2>Next token</h2><p class="note">At each position, the softmax of the logits: '
        f"the likeliest next tokens, and the probability and loss (−log p) of the token that actually follows. {mean}</p>"
        f"{picture}<table>{header}{''.join(rows)}</table></section>"
    )


def classes_section(numbers: dict, images: dict) -> str:
    pooled = numbers["tokens"][numbers["pooled_position"]]
    rows = "".join(
        f'<tr><td>{esc(c["label"])}</td><td class="num">{c["probability"]:.4f}</td>'
        f'<td><span class="bar" style="width:{200 * c["probability"]:.0f}px"></span></td></tr>'
        for c in numbers["classes"]
    )
    return (
        f'<section id="classes"><h2>Classes</h2><p class="note">The classifier reads the last token, {code(pooled)} '
        f"at position {numbers['pooled_position']} (it alone has seen the whole text), and its head gives these "
        f"probabilities.</p><table><tr><th>class</th><th>p</th><th></th></tr>{rows}</table>"
        f"{image(images, 'classes.png', 'class probabilities')}</section>"
    )


def attention_section(numbers: dict, images: dict) -> str:
    picked = numbers["picked"]
    return (
        '<section id="attention"><h2>Attention</h2><p class="note">The weights of every head of layers '
        f"{', '.join(map(str, numbers['layers']))} (heads {', '.join(map(str, numbers['heads']))}), from the model's "
        "eager attention path. Row t: how much position t reads each earlier position; each row sums to 1, and the "
        "grey cells above the diagonal are the causal mask (a position never reads a later one).</p>"
        f"{image(images, 'attention.png', 'every head of the chosen layers')}"
        f"<h3>Layer {picked['layer']}, head {picked['head']}</h3>"
        f"{image(images, 'attention_head.png', 'one head, with the tokens on both axes')}</section>"
    )


def logit_lens_section(numbers: dict, images: dict) -> str:
    what = "class" if numbers["kind"] == "classifier" else "next token"
    return (
        '<section id="logit-lens"><h2>Logit lens</h2><p class="note">For every layer, the '
        f"{what} that the final norm and the head would predict from that layer's hidden state, at each position. "
        "In the picture, a row per input token and a column per layer; the last column is the model's own prediction "
        "(that layer's hidden state is already after the final norm, so it goes to the head as it is).</p>"
        f"{image(images, 'logit_lens.png', 'logit lens')}</section>"
    )


def embeddings_section(numbers: dict) -> str:
    rows = "".join(
        f"<tr><td>{code(entry['token'])}</td><td>{entry['token']['id']}</td><td>"
        + " ".join(f'{code(n)}&nbsp;{n["cosine"]:.3f}' for n in entry["nearest"])
        + "</td></tr>"
        for entry in numbers["embeddings"]
    )
    return (
        '<section id="embeddings"><h2>Embeddings</h2><p class="note">The tokens whose embedding rows are nearest, '
        "by cosine, to the first distinct tokens of the prompt.</p>"
        f"<table><tr><th>token</th><th>id</th><th>nearest tokens (cosine)</th></tr>{rows}</table></section>"
    )


def data_script(numbers: dict) -> str:
    """The numbers as JSON inside report.html; every `<` is escaped (\\u003c, still JSON), so no text of the
    prompt can end the script or open a comment in it."""
    text = json.dumps(numbers, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="data">{text}</script>'


def data_details(numbers: dict) -> str:
    """The numbers as JSON in a folded box: the web page's tab (Gradio warns about any <script> in its HTML)."""
    text = html.escape(json.dumps(numbers, ensure_ascii=False, allow_nan=False))
    return f'<details><summary>The numbers (JSON)</summary><pre class="data">{text}</pre></details>'


def report_body(numbers: dict, images: dict, numbers_in: str = "script") -> str:
    """The report as one HTML fragment (CSS and numbers inside it); `numbers_in`: "script" (report.html)
    or "details" (a box the reader can unfold, for the web page)."""
    loss = numbers.get("mean_loss")
    facts = f"{len(numbers['tokens'])} tokens" + (f", mean next-token loss {loss:.3f}" if loss is not None else "")
    parts = [
        f'<div class="inspect-report"><style>{STYLE}</style>',
        f"<h1>Inside {esc(numbers['model'])}</h1><p class=\"note\">{esc(numbers['kind'])}; prompt: "
        f"<code>{esc(numbers['prompt'])}</code>; {facts}.</p>",
        tokens_section(numbers),
        classes_section(numbers, images) if numbers["kind"] == "classifier" else next_token_section(numbers, images),
        attention_section(numbers, images),
        logit_lens_section(numbers, images),
        embeddings_section(numbers),
        data_script(numbers) if numbers_in == "script" else data_details(numbers),
        "</div>",
    ]
    return "\n".join(parts)


def report_html(numbers: dict, images: dict) -> str:
    """report.html: one file, everything inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>scratch-gpt inspect: {esc(numbers['model'])}</title></head><body>\n"
        f"{report_body(numbers, images)}\n<script>{SCRIPT}</script>\n</body></html>\n"
    )


def write_report(numbers: dict, folder) -> None:
    """report.html and the PNGs into `folder` (the caller's atomic temporary folder)."""
    images = pictures(numbers)
    for name, data in images.items():
        (Path(folder) / name).write_bytes(data)
    (Path(folder) / "report.html").write_text(report_html(numbers, images), encoding="utf-8")


def shown(text: str) -> str:
    """A token's text on one line, its spaces and line breaks visible, other control characters as \\xNN."""
    text = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def summary(numbers: dict) -> str:
    """What the terminal shows: the tokens, each position's likeliest next token, the lens at the last position."""
    lines = [f"{len(numbers['tokens'])} tokens: " + " ".join(f"{shown(t['text'])}({t['id']})" for t in numbers["tokens"])]
    if numbers["kind"] == "classifier":
        pooled = numbers["tokens"][numbers["pooled_position"]]
        lines.append(f"pooled token: {shown(pooled['text'])!r} at position {numbers['pooled_position']}")
        lines += [f"  {c['label']:<12} {c['probability']:.3f}" for c in numbers["classes"]]
    else:
        lines.append("position  token         likeliest next (p)        actual next (p, loss)")
        for t, (token, row) in enumerate(zip(numbers["tokens"], numbers["next_token"])):
            best, actual = row["top"][0], row.get("actual")
            after = f"{shown(actual['text'])!r} ({actual['probability']:.3f}, {actual['loss']:.2f})" if actual else "-"
            lines.append(f"{t:>8}  {shown(token['text'])!r:<12}  {shown(best['text'])!r:<12} ({best['probability']:.3f})     {after}")
        if numbers["mean_loss"] is not None:
            lines.append(f"mean loss of the actual next tokens: {numbers['mean_loss']:.3f}")
    lines.append("logit lens at the last position:")
    for row in numbers["logit_lens"]["rows"]:
        cell = row["cells"][-1]
        said = cell["label"] if "label" in cell else repr(shown(cell["text"]))
        lines.append(f"  {row['name']:<24} {said} ({cell['probability']:.3f})")
    return "\n".join(lines)
