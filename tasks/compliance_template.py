"""The compliance report as one self-contained HTML page: inline CSS, no script, no external
link needed to read it, a table of contents, everything escaped. The model card's markdown is
rendered with raw HTML disabled (markdown-it-py), so a card cannot inject markup or script."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import Environment
from markdown_it import MarkdownIt
from markupsafe import Markup

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="modelyard {{ doc.format }}">
<title>Compliance report: {{ doc.subject.registered_model }} v{{ doc.subject.version }}</title>
<style>
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 21px; margin-top: 40px; padding-top: 8px;
  border-top: 2px solid #243b6b; color: #243b6b; } h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #5a6473; margin: 0 0 16px; } code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 12.5px; word-break: break-all; }
nav.toc { background: #f0f3f8; border: 1px solid #d8deea; padding: 8px 20px; margin: 16px 0; }
nav.toc ol { margin: 4px 0; } nav.toc ol ol { font-size: 13.5px; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 12px; font-size: 13.5px; }
th, td { border: 1px solid #dde2ea; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; font-weight: 600; } table.facts th { width: 28%; }
td.missing, span.missing, p.missing { color: #9a3412; font-style: italic; } p.none { color: #5a6473; }
ol.path { margin: 0; padding-left: 22px; }
.verified { color: #166534; font-weight: 600; } .unverified { color: #b91c1c; font-weight: 600; }
.card { border: 1px solid #dde2ea; padding: 4px 16px; background: #fbfcfd; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e6ecf7; font-size: 12px; }
details summary { cursor: pointer; color: #243b6b; }
@media print { body { background: #fff; } main { padding: 0; } nav.toc { break-after: page; } }
</style>
</head>
<body>
<main>
<h1>Compliance report: {{ doc.subject.registered_model }} v{{ doc.subject.version }}</h1>
<p class="meta">Model <strong>{{ doc.subject.model }}</strong>, environment <strong>{{ doc.subject.environment }}</strong>.
Technical documentation following Annex IV of the EU AI Act (Regulation (EU) 2024/1689).
Generated {{ doc.generated_at }} by {{ doc.generated_by }}; format {{ doc.format }}.
Where evidence does not exist the report says <span class="missing">not recorded</span>.</p>
<nav class="toc" aria-label="Table of contents"><strong>Contents</strong>
<ol>
{%- for section in doc.sections %}
<li><a href="#{{ section.id }}">{{ section.title }}</a>
<ol>{% for block in section.blocks %}<li><a href="#{{ section.id }}-{{ loop.index }}">{{ block.title }}</a></li>{% endfor %}</ol>
</li>
{%- endfor %}
</ol>
</nav>
{%- for section in doc.sections %}
<section id="{{ section.id }}">
<h2>{{ section.title }}</h2>
{%- for block in section.blocks %}
{%- set anchor = section.id ~ "-" ~ loop.index %}
<h3 id="{{ anchor }}">{{ block.title }}</h3>
{%- if block.kind == "facts" %}
<table class="facts"><tbody>
{%- for row in block.rows %}
<tr><th scope="row">{{ row.name }}</th><td class="{{ '' if row.recorded else 'missing' }}">{{ row.value }}</td></tr>
{%- endfor %}
</tbody></table>
{%- elif block.kind == "table" %}
{%- if block.empty %}<p class="{{ 'missing' if block.empty.startswith('not recorded') else 'none' }}">{{ block.empty }}</p>
{%- else %}
{%- if block.collapsed %}<details><summary>{{ block.rows|length }} rows</summary>{% endif %}
<table><thead><tr>{% for column in block.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in block.rows %}
<tr>{% for cell in row %}<td{% if cell.startswith('not recorded') %} class="missing"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody></table>
{%- if block.collapsed %}</details>{% endif %}
{%- endif %}
{%- elif block.kind == "records" %}
{%- if block.empty %}<p class="{{ 'missing' if block.empty.startswith('not recorded') else 'none' }}">{{ block.empty }}</p>
{%- else %}
<table class="records"><thead><tr><th>seq</th><th>time (UTC)</th><th>environment</th><th>action</th><th>subject</th>
<th>actor</th><th>details</th><th>inclusion proof</th></tr></thead><tbody>
{%- for row in block.rows %}
<tr class="record" data-seq="{{ row.seq }}" data-action="{{ row.action }}"><td><a href="#proof-{{ row.seq }}">{{ row.seq }}</a></td>
<td class="time">{{ row.time }}</td><td>{{ row.environment }}</td><td>{{ row.action }}</td><td>{{ row.subject }}</td>
<td>{{ row.actor }}</td><td>{{ row.summary }}</td>
<td class="proof {{ 'verified' if row.proof.verified else 'unverified' }}" title="{{ row.proof.text }}">
{{- '✓ verified' if row.proof.verified else '✗ NOT verified: ' ~ row.proof.text }}</td></tr>
{%- endfor %}
</tbody></table>
{%- endif %}
{%- elif block.kind == "proofs" %}
{%- if block.empty %}<p class="{{ 'missing' if block.empty.startswith('not recorded') else 'none' }}">{{ block.empty }}</p>
{%- else %}
<table class="proofs"><thead><tr><th>seq</th><th>record</th><th>leaf index / tree size</th><th>leaf hash</th>
<th>audit path</th><th>result</th></tr></thead><tbody>
{%- for row in block.rows %}
<tr id="proof-{{ row.seq }}" class="proof-row"><td>{{ row.seq }}</td><td>{{ row.action }}<br>{{ row.subject }}<br>{{ row.time }}</td>
<td>{{ row.leaf_index }} / {{ row.tree_size }}</td><td class="mono">{{ row.leaf_hash }}</td>
<td class="mono">{% if row.audit_path %}<ol class="path">{% for step in row.audit_path %}<li>{{ step }}</li>{% endfor %}</ol>{% else %}(empty: a one-record tree){% endif %}</td>
<td class="proof {{ 'verified' if row.verified else 'unverified' }}">{{ '✓ verified' if row.verified else '✗ NOT verified' }}: {{ row.verification }}</td></tr>
{%- endfor %}
</tbody></table>
{%- endif %}
{%- elif block.kind == "markdown" %}
{%- if block.empty %}<p class="{{ 'missing' if block.empty.startswith('not recorded') else 'none' }}">{{ block.empty }}</p>
{%- else %}<div class="card">{{ block.text|markdown }}</div>{% endif %}
{%- else %}
<p>{{ block.text }}</p>
{%- endif %}
{%- endfor %}
</section>
{%- endfor %}
</main>
</body>
</html>
"""

_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str) -> Markup:
    """Markdown as HTML, raw HTML in it escaped and unsafe link schemes (javascript:, data:) dropped."""
    return Markup(_markdown.render(text))


_environment = Environment(autoescape=True, trim_blocks=False, lstrip_blocks=False, keep_trailing_newline=True)
_environment.filters["markdown"] = markdown_html
_template = _environment.from_string(TEMPLATE)


def render_html(document: Mapping[str, Any]) -> str:
    """The compliance document as one self-contained, escaped HTML page with a table of contents."""
    return _template.render(doc=document)
