"""The GBNF checker's whole-grammar checks, run once the rules are built.

The checks llama.cpp makes when it builds a sampler (undefined rules are
caught by the parser; left recursion here), each with a bound on the work
llama.cpp would spend on it, plus the checks it lacks: left recursion hidden
behind rules that may match nothing (which grows its parse stacks without
end) and grammars whose rules can begin in exponentially many ways (which
makes its parse stacks, compared pairwise, hang it). Everything is linear in
the expanded grammar: nullability by fixpoint, leftmost edges, strongly
connected components, and counts along a topological order.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvllama.errors import GrammarError
from kvllama.gbnf.limits import (
    _CAP,
    MAX_LEFT_RECURSION_WORK,
    MAX_RULE_CHAIN,
    MAX_START_PATHS,
    Alternative,
)
from kvllama.gbnf.parser import _Parser


@dataclass(frozen=True)
class GrammarSummary:
    """What llama.cpp will build from an accepted grammar (for tests and logs)."""

    rules: int
    elements: int
    start_paths: int
    left_recursion_work: int



class _Analysis:
    """The checks llama.cpp makes when it builds the sampler, and the costs it would pay doing so."""

    def __init__(self, parser: _Parser) -> None:
        self.p = parser
        self.alts: list[list[Alternative]] = [body for body in parser.rules if body is not None]
        assert len(self.alts) == len(parser.rules)
        self.n = len(self.alts)

    def run(self, root: int) -> GrammarSummary:
        nullable = self._nullable()
        # llama.cpp's notion of "may be empty": the rule has an empty alternative.
        may_be_empty = [[] in alts for alts in self.alts]
        llama_edges = self._leftmost_edges(may_be_empty)
        work = self._left_recursion_work(self._order(llama_edges), llama_edges)
        true_edges = self._leftmost_edges(nullable)
        comp, order = _components(true_edges)
        # llama.cpp only ever expands rules it can reach from root; its own
        # checks above cover every rule, these two only what it will expand.
        used = self._reachable(root)
        self._refuse_growing_cycles(comp, nullable, used)
        paths = self._start_paths(comp, order, true_edges, used)
        return GrammarSummary(rules=self.n, elements=self.p.elements, start_paths=paths,
                              left_recursion_work=work)

    def _name(self, sid: int) -> str:
        return self.p.origin[sid]

    def _nullable(self) -> list[bool]:
        """Which rules can match the empty string (a fixpoint, linear in the grammar)."""
        nullable = [False] * self.n
        waiting: list[list[int]] = [[] for _ in range(self.n)]  # rule -> alternatives that mention it
        missing: list[int] = []  # per such alternative: references not yet known to be nullable
        owner: list[int] = []
        ready: list[int] = []
        for sid, alts in enumerate(self.alts):
            for alt in alts:
                if not alt:
                    ready.append(sid)
                elif min(alt) >= 0:  # references only
                    key = len(missing)
                    missing.append(len(alt))
                    owner.append(sid)
                    for ref in alt:
                        waiting[ref].append(key)
        while ready:
            sid = ready.pop()
            if nullable[sid]:
                continue
            nullable[sid] = True
            for key in waiting[sid]:
                missing[key] -= 1
                if missing[key] == 0:
                    ready.append(owner[key])
        return nullable

    def _leftmost_edges(self, empty: list[bool]) -> list[list[int]]:
        """Rule -> the rules it can begin with (one entry per occurrence), given which may be empty."""
        edges: list[list[int]] = [[] for _ in range(self.n)]
        for sid, alts in enumerate(self.alts):
            out = edges[sid]
            for alt in alts:
                for ref in alt:
                    if ref < 0:
                        break
                    out.append(ref)
                    if not empty[ref]:
                        break
        return edges

    def _order(self, edges: list[list[int]]) -> list[int]:
        """Rules, each after the rules it can begin with; a cycle is left recursion (llama.cpp's check)."""
        state = [0] * self.n  # 0 new, 1 on the path, 2 done
        order: list[int] = []
        for start in range(self.n):
            if state[start]:
                continue
            path, cursor = [start], [0]
            state[start] = 1
            while path:
                sid, i = path[-1], cursor[-1]
                if i == len(edges[sid]):
                    state[sid] = 2
                    order.append(sid)
                    path.pop()
                    cursor.pop()
                    continue
                cursor[-1] += 1
                nxt = edges[sid][i]
                if state[nxt] == 1:
                    names = " -> ".join(self._name(s) for s in [*path[path.index(nxt):], nxt])
                    raise GrammarError(
                        f"grammar is left-recursive: rule {self._name(nxt)!r} can begin with itself "
                        f"without consuming a character ({names}); llama.cpp does not support left "
                        "recursion; rewrite it with repetition (e.g. list ::= item (\",\" item)*)")
                if state[nxt] == 0:
                    state[nxt] = 1
                    path.append(nxt)
                    cursor.append(0)
        return order

    def _left_recursion_work(self, order: list[int], edges: list[list[int]]) -> int:
        """Steps (and depth) of llama.cpp's un-memoised recursive left-recursion check."""
        calls = [1] * self.n
        depth = [1] * self.n
        for sid in order:
            for nxt in edges[sid]:
                calls[sid] = min(_CAP, calls[sid] + calls[nxt])
                depth[sid] = max(depth[sid], depth[nxt] + 1)
        deepest = max(range(self.n), key=depth.__getitem__)
        if depth[deepest] > MAX_RULE_CHAIN:
            raise GrammarError(f"rule {self._name(deepest)!r} starts a chain of {depth[deepest]} rules that "
                               f"can each begin with the next (at most {MAX_RULE_CHAIN}); llama.cpp "
                               "checks such chains recursively")
        visited = [False] * self.n
        total = 0
        for sid in range(self.n):  # llama.cpp's top-level loop skips rules a previous check visited
            if visited[sid]:
                continue
            total = min(_CAP, total + calls[sid])
            if total > MAX_LEFT_RECURSION_WORK:
                raise GrammarError(
                    f"rule {self._name(sid)!r} can begin in too many ways: llama.cpp's left-recursion "
                    f"check would take more than {MAX_LEFT_RECURSION_WORK} steps (for example "
                    "r1 ::= r2 | r2 r2 ... repeated down a chain doubles it at every level)")
            todo = [sid]
            visited[sid] = True
            while todo:
                for nxt in edges[todo.pop()]:
                    if not visited[nxt]:
                        visited[nxt] = True
                        todo.append(nxt)
        return total

    def _reachable(self, root: int) -> list[bool]:
        seen = [False] * self.n
        seen[root] = True
        todo = [root]
        while todo:
            for alt in self.alts[todo.pop()]:
                for ref in alt:
                    if ref >= 0 and not seen[ref]:
                        seen[ref] = True
                        todo.append(ref)
        return seen

    def _refuse_growing_cycles(self, comp: list[int], nullable: list[bool], used: list[bool]) -> None:
        """Refuse left recursion llama.cpp misses that would grow its parse stacks without end.

        llama.cpp only treats a rule as possibly empty when it has an empty
        alternative, so ``r ::= e r "x"`` with ``e ::= f``, ``f ::= "" | "y"``
        passes its check. Expanding such a rule pushes the rest of the
        alternative (``"x"``) and reaches ``r`` again without consuming
        anything: the stack grows until memory runs out. A cycle whose every
        step is the last item of its alternative pushes nothing and is harmless
        (llama.cpp de-duplicates the stacks, so ``("a"?)*`` is accepted), so
        only cycles through a step with something after it are refused.
        """
        for sid, alts in enumerate(self.alts):
            if not used[sid]:
                continue
            for alt in alts:
                last = len(alt) - 1
                for i, ref in enumerate(alt):
                    if ref < 0:
                        break
                    if i < last and comp[ref] == comp[sid]:
                        raise GrammarError(
                            f"grammar is left-recursive: rule {self._name(ref)!r} can come back to rule "
                            f"{self._name(sid)!r} without consuming a character (through rules that may "
                            "match nothing); llama.cpp would grow its parse stacks until memory runs "
                            "out; make the repeated part consume at least one character")
                    if not nullable[ref]:
                        break

    def _start_paths(
        self, comp: list[int], order: list[int], edges: list[list[int]], used: list[bool],
    ) -> int:
        """The most chains of rules any rule can begin with (a bound on llama.cpp's parse stacks).

        llama.cpp expands a position into one stack per distinct way of reaching
        a first character, and de-duplicates them pairwise (quadratic), so a
        grammar whose rules can begin in exponentially many ways hangs it.
        Steps inside a (harmless, tail-only) cycle are not followed.
        """
        paths = [1] * self.n
        for sid in order:  # components in reverse topological order
            own = comp[sid]
            for nxt in edges[sid]:
                if comp[nxt] != own:
                    paths[sid] = min(_CAP, paths[sid] + paths[nxt])
        worst = max(range(self.n), key=lambda sid: paths[sid] if used[sid] else 0)
        if paths[worst] > MAX_START_PATHS:
            count = paths[worst] if paths[worst] < _CAP else "too many"
            raise GrammarError(
                f"rule {self._name(worst)!r} can begin in {count} different ways (chains of rules that "
                f"can come first; at most {MAX_START_PATHS}); llama.cpp keeps a parse stack for each and "
                "compares them pairwise; make the alternatives less ambiguous")
        return paths[worst]


def _components(edges: list[list[int]]) -> tuple[list[int], list[int]]:
    """Strongly connected components (Tarjan's algorithm, iterative).

    Returns each node's component number and the nodes in the order their
    components were completed, which is reverse topological: every node comes
    after the nodes of other components it has edges to.
    """
    n = len(edges)
    index = [-1] * n
    low = [0] * n
    comp = [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    order: list[int] = []
    counter = n_comp = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            node, i = work[-1]
            if i < len(edges[node]):
                work[-1] = (node, i + 1)
                nxt = edges[node][i]
                if index[nxt] < 0:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack[nxt] = True
                    work.append((nxt, 0))
                elif on_stack[nxt]:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    comp[member] = n_comp
                    order.append(member)
                    if member == node:
                        break
                n_comp += 1
    return comp, order
