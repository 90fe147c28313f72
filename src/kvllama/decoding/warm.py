"""The decode loop's use of the KV cache: restore at admission, save at set points.

This is the only engine module that knows about :mod:`kvllama.kvcache`. It
runs on the loop thread (the state blob must be read and written there);
the cache's writer pool does the file work off the decode path.

Exactness rules (docs/measured/exactness.md): the cache holds canonical KV only,
the leading tokens a request computed in prompt chunks of 8+ rows
(``Request.exact_len``), never a reply's decode rows; and a restore always
leaves at least ``min_tail`` prompt tokens to prefill (a longer row is cut
back after the restore), so the rest is computed in canonical chunks too. A
restored prefix therefore gives bit-identical tokens to a cold prefill, and a
conversation resumed from its finish row (which ends at the turn's prompt; the
next turn re-prefills the reply) equals a cold run of the same tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from kvllama.backend.protocol import Backend
from kvllama.decoding.fresh_rows import FreshRow, FreshRows
from kvllama.decoding.recent_prefixes import RecentPrefixes
from kvllama.decoding.request import Request, prompt_resume_point, resume_point
from kvllama.decoding.scheduler import MIN_CHUNK_ROWS
from kvllama.kvcache import CacheHit, KeyRoot, KvCache, SaveReason
from kvllama.tokens import shared_prefix

# Per-salt roots kept at hand (an LRU): a client that sends a fresh random cache_salt with
# every request must not grow the engine's memory. A dropped root is rebuilt on its next use.
MAX_SALT_ROOTS = 4096


@dataclass(frozen=True)
class SavePolicy:
    # Prompts shorter than this are not saved after prefill ("cold" saves).
    min_tokens: int = 128
    # Prompt rows sit on multiples of this (matches the prefill chunk alignment).
    boundary: int = 64
    # A restore leaves at least this many prompt tokens to prefill (MIN_CHUNK_ROWS).
    min_tail: int = MIN_CHUNK_ROWS
    # A restore is worth it only if it spares at least this many prompt tokens.
    min_restore: int = 16
    # A finish row is saved when the request added at least this many canonical tokens.
    finish_min_new: int = 1
    # Shared-prefix rows a prompt's prefill may save besides its cold row.
    max_prefix_points: int = 4


class WarmStart:
    def __init__(self, cache: KvCache, root: KeyRoot, backend: Backend, policy: SavePolicy) -> None:
        self.cache = cache
        self.backend = backend
        self.policy = policy
        self._base_root = root
        self._roots: OrderedDict[tuple[str | None, tuple[tuple[str, float], ...]], KeyRoot] = OrderedDict()
        # Prefill rows handed to the writer pool and maybe not yet visible: key -> (tenant, tokens).
        self._unpublished: dict[bytes, tuple[object, tuple[int, ...]]] = {}
        self.recent = RecentPrefixes(cache.config.block_size)
        self.fresh = FreshRows()

    def root(self, salt: str | None, adapter_key: tuple[tuple[str, float], ...] = ()) -> KeyRoot:
        """The key root of one tenant and adapter set; the most recent ``MAX_SALT_ROOTS`` are kept."""
        tenant = (salt, adapter_key)
        root = self._roots.get(tenant)
        if root is not None:
            self._roots.move_to_end(tenant)
            return root
        root = replace(self._base_root, cache_salt=salt, adapters=adapter_key)
        self.cache.register_root(root)
        self._roots[tenant] = root
        if len(self._roots) > MAX_SALT_ROOTS:
            self._roots.popitem(last=False)
        return root

    def cold_save_point(self, n_prompt: int) -> int | None:
        """Where to snapshot a prompt's prefill (an aligned boundary), or None."""
        p = self.policy
        point = (n_prompt - p.min_tail) // p.boundary * p.boundary
        return point if point >= p.min_tokens else None

    def restore(self, r: Request) -> None:
        """Load the best usable row into the request's sequence.

        Looked up in the documented order (exact prompt, ``parent_key``, longest
        prefix), any row up to the whole prompt; a row that leaves fewer than
        ``min_tail`` tokens to prefill is cut back to leave that many, which
        keeps the prompt's last chunk canonical. A longer row that only starts
        like the prompt (another user's question after the same system prompt)
        is used when it shares more, cut back to the shared part. A cut that
        the model's sliding window refuses is never tried: such rows are passed
        over for shorter ones.
        """
        limit = self._restore_limit(r)
        if limit < self.policy.min_restore:
            return
        root = self.root(*r.options.kv_tenant)
        hit = self._prefix_hit(root, r, limit)
        best = min(hit.n_tokens, limit) if hit is not None else 0
        fresh = self.fresh.longest(r.prompt, r.options.kv_tenant, limit)
        if fresh is not None and len(fresh.tokens) > best and self._load_fresh(r, fresh):
            r.cache.hit_kind = "exact" if r.n_computed >= limit else "partial"
            r.cache.source = "memory"
            return
        shared = self._shared_hit(root, r, limit, better_than=best)
        if shared is not None and self._load(r, shared[0]) and self._cut(r, shared[1]):
            r.cache.hit_kind = "partial"
            return
        if hit is None or best < self.policy.min_restore or not self._load(r, hit):
            return
        if r.n_computed > limit and not self._cut(r, limit):
            return
        # "exact": nothing more of this prompt could have been restored under the rules above.
        r.cache.hit_kind = "exact" if r.n_computed >= limit else "partial"

    def restorable(self, r: Request) -> int:
        """Prompt tokens a restore would give ``r`` from its own rows (prefix or fresh), nothing loaded."""
        limit = self._restore_limit(r)
        if limit < self.policy.min_restore:
            return 0
        hit = self._prefix_hit(self.root(*r.options.kv_tenant), r, limit, count=False)
        best = min(hit.n_tokens, limit) if hit is not None else 0
        fresh = self.fresh.longest(r.prompt, r.options.kv_tenant, limit)
        best = max(best, len(fresh.tokens) if fresh is not None else 0)
        return best if best >= self.policy.min_restore else 0

    def _restore_limit(self, r: Request) -> int:
        """The most of ``r``'s prompt a restore may give: ``min_tail`` tokens left, on the resume grid."""
        return resume_point(len(r.prompt) - self.policy.min_tail, self.backend.shape.swa_window)

    def _prefix_hit(self, root: KeyRoot, r: Request, limit: int, count: bool = True) -> CacheHit | None:
        """The best row that is a prefix of the prompt, on the resume grid, that a cut to ``limit`` allows."""
        window = self.backend.shape.swa_window
        hit = self.cache.lookup(root, r.prompt, max_len=len(r.prompt), parent_key=r.options.parent_key,
                                count=count)
        # Rows above the window sit on the resume grid; one that does not (an older layout),
        # or one the window forbids cutting back to ``limit``, is passed over for a shorter row.
        while hit is not None and (resume_point(hit.n_tokens, window) != hit.n_tokens
                                   or (hit.n_tokens > limit and not self._can_cut(hit.n_tokens, limit))):
            below = resume_point(hit.n_tokens, window)
            below = below if below < hit.n_tokens else limit
            hit = self.cache.lookup(root, r.prompt, max_len=min(below, limit), count=count)
        return hit

    def _shared_hit(
        self, root: KeyRoot, r: Request, limit: int, better_than: int
    ) -> tuple[CacheHit, int] | None:
        """A longer row sharing more than ``better_than`` tokens with the prompt, and where to cut it."""
        found = self.cache.lookup_shared(root, r.prompt, max_len=limit)
        if found is None:
            return None
        hit, shared = found
        if r.spec.layout is not None:  # media: the tokens past the shared blocks may agree too
            shared = shared_prefix(tuple(hit.tokens[: limit + 1]), r.prompt[: limit + 1])
        cut = self.cut_point(r, min(shared, limit))
        if cut <= max(better_than, self.policy.min_restore - 1) or not self._can_cut(hit.n_tokens, cut):
            return None
        return hit, cut

    def _can_cut(self, row_len: int, n_keep: int) -> bool:
        """Can a restored row of ``row_len`` tokens be cut to ``n_keep``?

        A state blob holds only the sliding-window layers' last ``n_swa``
        positions (docs/measured/exactness.md), and the token after the cut attends
        to the ``n_swa`` positions before it: all must be in the blob.
        """
        n_swa = self.backend.description.n_swa
        return n_swa <= 0 or max(0, row_len - n_swa) <= max(0, n_keep - n_swa)

    def cut_point(self, r: Request, n: int) -> int:
        """Where ``r`` may resume from a row cut back to at most ``n`` tokens: the save grid, or for a
        prompt with media its layout's rule (kvllama.media.layout), then the resume grid."""
        layout = r.spec.layout
        if layout is None:
            return self.grid_point(n)
        return prompt_resume_point(layout, n, self.backend.shape.swa_window)

    def grid_point(self, n: int) -> int:
        """The longest save or cut point at most ``n`` tokens: on the boundary grid, then the resume grid."""
        return resume_point(n // self.policy.boundary * self.policy.boundary, self.backend.shape.swa_window)

    def _load(self, r: Request, hit: CacheHit) -> bool:
        """Restore ``hit`` into the request's sequence; False (sequence left empty) if unusable.

        A blob llama.cpp refuses (a stream count or layout from another
        configuration, a format change) is handed back to the cache as a miss
        and forgotten there, so the next request does not hit it again.
        """
        blob = self.cache.load(hit)
        assert r.seq_id is not None
        if blob is None:  # vanished or corrupt: load() counted the miss
            self.backend.clear_sequence(r.seq_id)
            return False
        if not self.backend.restore_sequence(r.seq_id, blob):
            self.cache.reject(hit)
            self.backend.clear_sequence(r.seq_id)
            return False
        r.n_computed = r.exact_len = r.cache.read = hit.n_tokens
        r.cache.restored_key = hit.key
        r.cache.source = "cache"
        return True

    def _load_fresh(self, r: Request, row: FreshRow) -> bool:
        """Restore a row saved moments ago from its blob in memory (see decoding/fresh_rows.py)."""
        assert r.seq_id is not None
        if not self.backend.restore_sequence(r.seq_id, row.blob):
            self.backend.clear_sequence(r.seq_id)
            return False
        r.n_computed = r.exact_len = r.cache.read = len(row.tokens)
        r.cache.restored_key = row.key
        return True

    def _cut(self, r: Request, n_keep: int) -> bool:
        """Cut a restored row back; False (sequence emptied) if its sliding window refuses."""
        assert r.seq_id is not None
        if self.backend.truncate_sequence(r.seq_id, n_keep):
            r.n_computed = r.exact_len = r.cache.read = n_keep
            r.cache.restored_key = None  # what the sequence holds is no longer that row
            return True
        self.backend.clear_sequence(r.seq_id)
        r.n_computed = r.exact_len = r.cache.read = 0
        r.cache.restored_key = None
        r.cache.source = "none"
        return False

    def save(self, r: Request, reason: SaveReason) -> bytes | None:
        """Snapshot the request's sequence as it is now, if all of it is canonical."""
        assert r.seq_id is not None
        n = r.n_computed
        if n <= 0 or r.exact_len < n:
            return None
        tokens = (r.prompt + tuple(r.generated))[:n]
        blob = self.backend.sequence_state(r.seq_id)
        # An empty or truncated blob is refused (and counted) by the cache: None, nothing recorded.
        key = self.cache.save(self.root(*r.options.kv_tenant), tokens, blob, reason)
        if key is not None:
            r.cache.created = max(r.cache.created, n - r.cache.read)
            # Lookups see the row once the writer has stored it; until then it is at hand here, so
            # the conversation's next turn, arriving at once on an evicted slot, still finds it.
            self.fresh.add(FreshRow(key, r.options.kv_tenant, tokens, blob))
            if reason in (SaveReason.COLD, SaveReason.PREFIX):
                self._unpublished[key] = (r.options.kv_tenant, tokens)
        return key

    def save_tokens(self, seq_id: int, tokens: tuple[int, ...], salt: str | None, reason: SaveReason,
                    adapter_key: tuple[tuple[str, float], ...] = ()) -> None:
        """Save a parked session's sequence before its slot is given back.

        Synchronous, bounded by the cache's sync timeout: the sequence is about
        to be cleared, so a dropped save would lose the conversation's state.
        An empty blob is refused and counted by the cache like any other save.
        """
        grid = resume_point(len(tokens), self.backend.shape.swa_window)
        if grid < len(tokens) and self.backend.truncate_sequence(seq_id, grid):
            tokens = tokens[:grid]  # a row off the resume grid could never be restored exactly
        if tokens:
            blob = self.backend.sequence_state(seq_id)
            self.cache.save(self.root(salt, adapter_key), tokens, blob, reason, sync=True)

    def plan_save_points(self, r: Request) -> None:
        """Where this request's prefill saves rows: its cold point and its shared-prefix points.

        Shared points: the offsets the caller named (``save_points``: the end
        of a system prompt, ``cache_control`` breakpoints) and the end of what
        the prompt shares with a recent one (:class:`RecentPrefixes`). Each is
        put on the save grid; points already cached, too short to be worth a
        row, or too close to another chunk end are dropped; at most
        ``max_prefix_points`` are kept (the shortest: they are shared most).
        """
        n = len(r.prompt)
        cold = self.cold_save_point(n)
        if cold is not None and r.spec.layout is not None:
            cold = self.cut_point(r, cold)
        r.cache.cold_point = cold if cold is not None and cold > r.n_computed else None
        root = self.root(*r.options.kv_tenant)
        recent = self.recent.observe(root.digest, r.prompt)
        wanted = sorted({self.cut_point(r, p) for p in (*r.options.save_points, recent) if p <= n})
        points: set[int] = set()
        for p in wanted:
            if len(points) >= self.policy.max_prefix_points:
                break
            if self._worth_saving(r, p) and self.cache.find_row(root, r.prompt[:p]) is None:
                points.add(p)
        r.cache.prefix_points = points

    def _worth_saving(self, r: Request, p: int) -> bool:
        return (self.policy.min_tokens <= p <= len(r.prompt) - self.policy.min_tail
                and p >= r.n_computed + self.policy.min_tail and p != r.cache.cold_point)

    def should_wait(self, r: Request, running: list[Request]) -> bool:
        """True while another request prefills (or is still saving) a prefix ``r`` could restore or copy.

        Agents that start together on one long system prompt then pay for one
        prefill, not one each: the first computes and saves the shared prefix,
        the others wait in the queue and restore it. A running request that
        shares a prefix with ``r`` but was not going to save there is asked
        to (the save point is added to its prefill), so this works for any
        shared prefix, not only the ones named in advance.
        """
        usable = len(r.prompt) - self.policy.min_tail
        for q in running:
            if q.options.kv_tenant != r.options.kv_tenant or q.n_computed >= len(q.prompt):
                continue
            shared = min(shared_prefix(r.prompt, q.prompt), usable)
            point = self.grid_point(shared)
            if point < self.policy.min_tokens:
                continue
            if q.n_computed >= point:
                # Past its row, the leader's live cells will hold the rest of the shared part after
                # its next chunk; copying them then (decoding/live_sources.py) beats prefilling it here.
                if q.n_computed < shared:
                    return True
                continue
            if point in (q.cache.cold_point, *q.cache.prefix_points):
                return True
            if point >= q.n_computed + self.policy.min_tail:
                q.cache.prefix_points.add(point)
                return True
        return self._saving_for(r, usable)

    def _saving_for(self, r: Request, usable: int) -> bool:
        """A prefill row that ``r`` could restore is still on its way to the cache."""
        if not self._unpublished:
            return False
        pending = self.cache.pending_keys()
        for key in [k for k in self._unpublished if k not in pending]:
            del self._unpublished[key]
        # A row still at hand (decoding/fresh_rows.py) is restorable now: no need to wait for it.
        return any(
            tenant == r.options.kv_tenant and len(toks) <= usable and r.prompt[: len(toks)] == toks
            and not self.fresh.covers(r.prompt, tenant, len(toks))
            for tenant, toks in self._unpublished.values()
        )

    def save_held(self, seq_id: int, tokens: tuple[int, ...],
                  tenant: tuple[str | None, tuple[tuple[str, float], ...]]) -> bytes | None:
        """A held sequence whose reply was settled (decoding/settling.py): saved like a finish row.

        Only on the resume grid (a row off it could not be restored exactly); at
        hand in memory until the writer has stored it, like every finish row.
        """
        if not tokens or resume_point(len(tokens), self.backend.shape.swa_window) != len(tokens):
            return None
        blob = self.backend.sequence_state(seq_id)
        key = self.cache.save(self.root(*tenant), tokens, blob, SaveReason.FINISH)
        if key is not None:
            self.fresh.add(FreshRow(key, tenant, tokens, blob))
        return key

    def save_live_prefix(self, r: Request) -> None:
        """A prefix copied from a live sequence (decoding/live_sources.py), saved as a row once.

        The copy leaves no row behind, and on a sliding-window model the
        source's own rows (the whole prompt) cannot be cut back to the shared
        part, so once the sources end (evicted, a restart) the next user of
        this prompt would prefill it again. The row sits on the save grid: the
        copy is cut back to it first, which leaves less than a block more to
        prefill.
        """
        point = self.cut_point(r, r.n_computed)
        if point < self.policy.min_tokens or r.seq_id is None:
            return
        tenant = r.options.kv_tenant
        if self.fresh.covers(r.prompt, tenant, point) or self.cache.find_row(self.root(*tenant),
                                                                             r.prompt[:point]) is not None:
            return
        if point < r.n_computed and not self.backend.truncate_sequence(r.seq_id, point):
            return
        r.n_computed = r.exact_len = r.cache.read = point
        self.save(r, SaveReason.PREFIX)

    def after_prefill_step(self, r: Request) -> None:
        c = r.cache
        if c.cold_point is not None and r.n_computed == c.cold_point:
            self.save(r, SaveReason.COLD)
        elif r.n_computed in c.prefix_points:
            self.save(r, SaveReason.PREFIX)

    def row_at(self, r: Request, n: int) -> bytes | None:
        """The key of the cached row of the request's first ``n`` tokens, if there is one."""
        return self.cache.find_row(self.root(*r.options.kv_tenant), (r.prompt + tuple(r.generated))[:n])

    def at_finish(self, r: Request) -> None:
        """The turn's finish row: saved, or (when the sequence is longer than the grid allows a
        row to be) the row already cached on the grid below it (see Finishing._cut_to_exact)."""
        grid = resume_point(r.n_computed, self.backend.shape.swa_window)
        if grid < r.n_computed:
            r.cache.finish_key = self.row_at(r, grid)
        elif r.n_computed - r.cache.read >= self.policy.finish_min_new:
            r.cache.finish_key = self.save(r, SaveReason.FINISH)
        elif r.cache.restored_key is not None and r.n_computed == r.cache.read:
            r.cache.finish_key = r.cache.restored_key  # the restored row is this turn's row

