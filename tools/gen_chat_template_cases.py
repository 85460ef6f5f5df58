"""Expected renderings for tests/unit/test_chat_template.c, computed by Jinja2
in the environment transformers' apply_chat_template sets up (trim_blocks,
lstrip_blocks, loop controls, raise_exception, tojson keeping non-ASCII).
Writes tests/fixtures/chat_templates/unit_cases.json; run with a Python
that has jinja2 (build/venv/bin/python tools/gen_chat_template_cases.py)."""
import os
import json, jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.ext import loopcontrols
def raise_exception(m): raise jinja2.exceptions.TemplateError(m)
def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
M = [{"role": "system", "content": " Sys "}, {"role": "user", "content": "Héllo 世界"}, {"role": "assistant", "content": "a</think>b"}]
cases = [
 ("{% for m in messages %}{{ loop.index0 }}:{{ m.role }}{% if not loop.last %},{% endif %}{% endfor %}"),
 ("  {% if true %}\n    x\n  {% endif %}\ny\n"),
 ("a  {%- if 1 %}  b  {%+ if 1 %}c{% endif +%}\nd{% endif -%}  \n  e\n\n"),
 ("{# c #}\n  {# d #}\nq{{ 'x' -}}   \n  {{- 'y' }}"),
 ("{{ messages[0].content|trim }}|{{ messages[1]['content']|length }}|{{ messages|length }}|{{ (messages[1:]|first).role }}|{{ messages[-1].content.split('</think>')[-1] }}"),
 ("{{ 'abc'[1:] }}{{ 'héllo'[::-1] }}{{ [1,2,3][:-1] }}{{ 'a,b,,c'.split(',') }}{{ '  x y  '.split() }}"),
 ("{% set ns = namespace(n=0, s='') %}{% for m in messages if m.role != 'system' %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}"),
 ("{% set x = 1 %}{% for i in [1,2] %}{% set x = x + i %}{% endfor %}{{ x }}"),
 ("{{ {'b': [1, 2.5, none, true, 'é\"\\n'], 'a': {}}|tojson }}|{{ {'k': [1, {'z': 'y'}]}|tojson(indent=2) }}"),
 ("{{ none }} {{ true }} {{ 1.0 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 / 4 }} {{ 'ab' * 2 }} {{ 1e20 }} {{ 0.1 + 0.2 }}"),
 ("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ {} is mapping }}{{ [] is iterable }}{{ 3 is odd }}{{ 'a' in 'bab' }}{{ 2 not in [1] }}{{ 'k' in {'k': 1} }}"),
 ("{{ 'x' if false }}|{{ 'y' if false else 'z' }}|{{ undefined_var|default('dflt') }}|{{ ''|default('e', true) }}|{{ [3,1]|join('-') }}|{{ 'MiX'|upper }}{{ 'MiX'|lower }}"),
 ("{% for k, v in {'a': 1, 'b': 2}|items %}{{ k }}={{ v }};{% endfor %}{% for k, v in {'c': 3}.items() %}{{ k }}{{ v }}{% endfor %}{{ {'q': 1}.get('q') }}{{ {'q': 1}.get('r', 'no') }}"),
 ("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}{% for i in [] %}x{% else %}empty{% endfor %}"),
 ("{{ messages|selectattr('role', 'equalto', 'user')|list|length }}{{ messages|rejectattr('role', 'equalto', 'user')|map(attribute='role')|list if false else '' }}{{ [1, none, 2]|reject('none')|list }}"),
 ("{{ raise_exception('no ' ~ messages[0].role) }}"),
 ("{{ messages[7].content }}"),
 ("{{ none + 'x' }}"),
 ("{% set b %}in {{ 'block' }}{% endset %}[{{ b }}]{{ '  pad\u3000'|trim }}|{{ 'xxaxx'.strip('x') }}|{{ 'ab'.startswith('a') }}{{ 'ab'.endswith(('x', 'b')) }}|{{ 'a-b-c'.replace('-', '+') }}"),
 ("{{ bos_token }}{{ [1, 'a', none] }}{{ {'a': \"it's\"} }}{{ 'x' + 'y' ~ 3 }}"),
 ("{%- if messages[0]['role'] == 'system' %}\n    {%- set sys = messages[0]['content'] %}\n{%- endif %}\n{{- sys }}\n{%- for message in messages[1:] %}\n    {{- '<' + message.role + '>' }}\n{%- endfor %}\n"),
]
out = []
for c in cases:
    try:
        r = env.from_string(c).render(messages=M, tools=None, documents=None, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        out.append({"t": c, "want": r})
    except Exception as e:
        out.append({"t": c, "err": str(e)})
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "tests", "fixtures", "chat_templates", "unit_cases.json"), "w", encoding="utf-8") as f:
    json.dump({"messages": M, "cases": out}, f, ensure_ascii=False, indent=1)
    f.write("\n")
