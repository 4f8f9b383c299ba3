"""The course's own machinery: what `make run`, `make publish` and `make site` call, not what a learner imports.

It may import `helpers` (the learner's library); it is never imported by helpers.

- `coursetools.runner`   executes the notebooks in order (`make run`) and writes `results/<preset>/timings.json`
- `coursetools.publish`  executed notebooks to `docs/executed/`, the README's and guide's generated blocks, the site's sources
- `coursetools.colab`    the notebooks' Colab install cell and the README's "Open in Colab" links
- `coursetools.speed`    this machine's speed on the course model, and a committed run's time scaled to it
"""
