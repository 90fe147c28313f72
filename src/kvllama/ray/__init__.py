"""Scale-out on Ray Serve (the optional extra ``kvllama[ray]``).

One Ray Serve application: an ingress that runs kvllama's own HTTP app
(OpenAI, Anthropic and Ollama routes, unchanged) and N replicas, each a
whole kvllama Engine with its own decode loop and cache tiers. The ingress
calls the replicas through a deployment handle whose request router sends
each request where its prompt's prefix is cached:

- ``policy``: sticky -> cache affinity -> load, from the replicas' reports (no Ray)
- ``router``: that policy as a Ray Serve ``RequestRouter``
- ``replica``: the replica deployment (an Engine; reports its digest to the router)
- ``remote_engine``: the ingress's Engine, which sends generation to the replicas
- ``deployment``: the Serve application (``build_app``, ``app_builder`` for ``serve run``)
- ``local``: ``kvllama serve --replicas N`` on a local Ray cluster

docs/guide/scaling-out.md has the commands and measured figures.
"""
