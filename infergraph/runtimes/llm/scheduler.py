"""Which tokens of which sequences the next model step computes (iteration-level scheduling).

Each step, in `continuous` mode: every running sequence that is decoding gets one token, then
prefill chunks (running sequences part-way through their prompt, and waiting ones joining) share
what is left of the step's token budget, most urgent first. Prompts are cut into chunks, so a long
prompt never stalls the streams already running. Urgency is (tier rank, deadline, arrival) as in
`runtimes.batching`: 0 = premium, 1 = standard, 2 = batch.

KV memory is a pool of fixed-size blocks. A premium sequence reserves all the blocks it can ever
need when it joins, so it never has to be preempted; others take blocks as they grow. When the
pool runs dry, the least urgent non-premium running sequence (batch tier before standard) is
preempted: its blocks are freed and it waits again, keeping its generated tokens, which are
prefilled again (recomputed) when it rejoins. A waiting sequence may push out running ones of a
lower tier to join. A sequence whose deadline passes before its first token is failed uncomputed.

Prefix caching (`prefix_caching=True`): a block whose tokens are all computed is registered under a
hash of its tokens chained with the hashes of the blocks before it, so it names the whole prefix. A
sequence that joins (or rejoins after preemption) takes over the longest run of registered blocks
that starts its tokens, shared and counted by reference, and computes only the rest: a system
prompt or an earlier turn of a conversation is prefilled once. A shared block is never written (a
sequence writes only past what it has computed). Freed blocks that are registered stay cached and
are reused least recently freed first when the pool needs blocks.

The `none`, `static` and `dynamic` modes are the baselines of the batching study, on the same
machinery: a batch forms only when nothing runs (one sequence; up to `max_running`; up to
`max_running` once that many wait or the oldest has waited `batch_wait_s`) and nobody joins it
until all of it is done.

Pure Python and single-threaded: the engine calls it from its event loop, between model steps.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

PREMIUM = 0
Mode = Literal["none", "static", "dynamic", "continuous"]
MODES: tuple[Mode, ...] = ("none", "static", "dynamic", "continuous")


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    tier_rank: int = 1
    deadline: float = math.inf
    arrived_at: float = 0.0
    arrival: int = 0  # set by the scheduler: ties broken first come, first served
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    blocks: list[int] = field(default_factory=list)
    status: SeqStatus = SeqStatus.WAITING
    preemptions: int = 0
    block_hashes: list[int] = field(default_factory=list)  # prefix hash of each full block, in order
    data: Any = None  # the engine's per-request state

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.tier_rank, self.deadline, self.arrival)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        """Tokens to feed before the next token can be sampled (1 while decoding)."""
        return self.length - self.num_computed

    def next_tokens(self, n: int) -> list[int]:
        start, p = self.num_computed, len(self.prompt_ids)
        ids = self.prompt_ids[start : start + n]
        if len(ids) < n:
            ids += self.output_ids[max(0, start - p) : start + n - p]
        return ids


@dataclass(frozen=True)
class Chunk:
    seq: Sequence
    start: int  # position of the first token
    tokens: list[int]
    samples: bool  # the chunk ends the sequence's known tokens: a new token is sampled from it


@dataclass
class Step:
    chunks: list[Chunk] = field(default_factory=list)
    expired: list[Sequence] = field(default_factory=list)  # deadline passed before the first token
    aborted: list[Sequence] = field(default_factory=list)


class BlockAllocator:
    """Free KV blocks, and (prefix caching) full blocks kept by the hash of the prefix they hold.

    A block is free (nothing worth keeping), in use (`refs` > 0) or cached-and-unused: it holds a
    registered prefix nobody uses now; it counts as free and is evicted, least recently released
    first, when `allocate` runs out of free blocks."""

    def __init__(self, num_blocks: int) -> None:
        self.total = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks
        self._block_of: dict[int, int] = {}  # prefix hash -> block
        self._hash_of: dict[int, int] = {}  # block -> prefix hash
        self._unused: OrderedDict[int, None] = OrderedDict()  # cached blocks with no user, LRU first

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._unused)

    @property
    def num_cached(self) -> int:
        return len(self._hash_of)

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise MemoryError(f"{n} KV blocks wanted, {self.num_free} free")
        taken = []
        for _ in range(n):
            if self._free:
                block = self._free.pop()
            else:  # evict the least recently released cached prefix
                block, _ = self._unused.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self._refs[block] = 1
            taken.append(block)
        return taken

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self._hash_of:
                    self._unused[block] = None
                else:
                    self._free.append(block)
        blocks.clear()

    def freed_by(self, blocks: list[int]) -> int:
        """How many blocks releasing `blocks` would free (a block shared with others stays in use)."""
        return sum(self._refs[b] == 1 for b in blocks)

    def register(self, block: int, prefix_hash: int) -> None:
        """`block` now holds the full prefix `prefix_hash` (first come: a duplicate stays unnamed)."""
        if prefix_hash not in self._block_of and block not in self._hash_of:
            self._block_of[prefix_hash] = block
            self._hash_of[block] = prefix_hash

    def share(self, prefix_hash: int) -> int | None:
        """The block holding `prefix_hash`, with one more reference; None when not cached."""
        block = self._block_of.get(prefix_hash)
        if block is not None:
            self._unused.pop(block, None)
            self._refs[block] += 1
        return block


def prefix_hash(parent: int, tokens: list[int]) -> int:
    """The hash of a full block's tokens and of every block before it (`parent`: the previous
    block's hash, 0 for the first)."""
    return hash((parent, tuple(tokens)))


class _Plan:
    """The chunks of the step being built and the token budget they use."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.sizes: dict[Sequence, int] = {}
        self._used = 0  # sum of sizes, kept as they change (hundreds of sequences a step on a GPU)

    def set(self, seq: Sequence, n: int) -> None:
        self._used += n - self.sizes.get(seq, 0)
        self.sizes[seq] = n

    def drop(self, seq: Sequence) -> None:
        self._used -= self.sizes.pop(seq, 0)

    @property
    def left(self) -> int:
        return self.budget - self._used


class Scheduler:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_batch_tokens: int,
        max_running: int,
        mode: Mode = "continuous",
        batch_wait_s: float = 0.05,
        prefix_caching: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown batching mode {mode!r}; expected one of {MODES}")
        self.blocks = BlockAllocator(num_blocks)
        self.block_size, self.max_batch_tokens, self.max_running = block_size, max_batch_tokens, max_running
        self.mode, self.batch_wait_s, self.prefix_caching = mode, batch_wait_s, prefix_caching
        # non-premium work leaves this many blocks free when it joins, so running streams can grow
        self.watermark = max(1, num_blocks // 100)
        self.waiting: list[Sequence] = []  # sorted by key
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._aborts: list[Sequence] = []
        self._arrivals = itertools.count()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ requests

    def add(self, seq: Sequence) -> None:
        if seq.request_id in self._by_id:
            raise ValueError(f"request id {seq.request_id!r} is already in flight")
        if self.blocks_for(len(seq.prompt_ids) + seq.max_tokens) > self.blocks.total:
            raise ValueError("the request needs more KV blocks than the pool has")
        seq.arrival = next(self._arrivals)
        seq.status = SeqStatus.WAITING
        self._by_id[seq.request_id] = seq
        bisect.insort(self.waiting, seq, key=lambda s: s.key)

    def abort(self, request_id: str) -> bool:
        """Dropped at the next `schedule` (safe to call while a step runs). False: not in flight."""
        seq = self._by_id.get(request_id)
        if seq is not None:
            self._aborts.append(seq)
        return seq is not None

    def finish(self, seq: Sequence) -> None:
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.release(seq.blocks)
        seq.status = SeqStatus.FINISHED
        self._by_id.pop(seq.request_id, None)

    def reset(self) -> list[Sequence]:
        """Drop everything (the step loop died); returns the sequences that were in flight."""
        dropped = list(self._by_id.values())
        for seq in dropped:
            self.finish(seq)
        self._aborts.clear()
        return dropped

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborts)

    # ------------------------------------------------------------------ one step

    def schedule(self, now: float) -> Step:
        step = Step()
        self._apply_aborts(step)
        self._expire(now, step)
        if self.mode != "continuous" and not self.running:
            self._form_batch(now)
        plan = _Plan(self.max_batch_tokens)
        for seq in sorted((s for s in self.running if s.pending == 1), key=lambda s: s.key):
            if plan.left == 0:
                break
            if seq.status is SeqStatus.RUNNING and self._grow(seq, seq.num_computed + 1, plan):
                plan.set(seq, 1)
        joining = list(self.waiting) if self.mode == "continuous" else []
        joining_set = set(joining)  # Sequence hashes by identity (eq=False)
        prefills = [s for s in self.running if s.pending > 1]
        admitting = True
        for seq in sorted(prefills + joining, key=lambda s: s.key):
            if plan.left == 0:
                break
            if seq in joining_set:
                if admitting and seq.status is SeqStatus.WAITING:
                    admitting = self._join(seq, plan)
            elif seq.status is SeqStatus.RUNNING:
                n = self._fit(seq, min(seq.pending, plan.left), spare=0)
                if self._grow(seq, seq.num_computed + n, plan):
                    plan.set(seq, n)
        for seq, n in sorted(plan.sizes.items(), key=lambda item: item[0].key):
            samples = seq.num_computed + n == seq.length
            step.chunks.append(Chunk(seq, seq.num_computed, seq.next_tokens(n), samples))
        self.counters["steps"] += bool(step.chunks)
        return step

    def complete(self, chunk: Chunk, token: int | None) -> None:
        """Record that `chunk` was computed (and the token sampled from it, if any)."""
        seq = chunk.seq
        seq.num_computed = chunk.start + len(chunk.tokens)
        self.counters["tokens_computed"] += len(chunk.tokens)
        if self.prefix_caching and seq.status is SeqStatus.RUNNING:
            self._register_full_blocks(seq)
        if token is not None:
            seq.output_ids.append(token)
            self.counters["tokens_generated"] += 1

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until waiting work needs a look even if nothing arrives (None: not before then)."""
        times = [s.deadline for s in self.waiting if not s.output_ids and math.isfinite(s.deadline)]
        if self.mode == "dynamic" and self.waiting and not self.running:
            times.append(min(s.arrived_at for s in self.waiting) + self.batch_wait_s)
        return max(0.0, min(times) - now) if times else None

    # ------------------------------------------------------------------ helpers

    def _apply_aborts(self, step: Step) -> None:
        for seq in self._aborts:
            if seq.status is not SeqStatus.FINISHED:
                self.finish(seq)
                step.aborted.append(seq)
                self.counters["aborted"] += 1
        self._aborts.clear()

    def _expire(self, now: float, step: Step) -> None:
        for seq in [s for s in self.waiting if not s.output_ids and s.deadline < now]:
            self.finish(seq)
            step.expired.append(seq)
            self.counters["deadline_exceeded"] += 1

    def _form_batch(self, now: float) -> None:
        """Baseline modes: start the next batch (only called when nothing runs)."""
        if not self.waiting:
            return
        size = 1 if self.mode == "none" else self.max_running
        oldest = min(s.arrived_at for s in self.waiting)
        if self.mode == "dynamic" and len(self.waiting) < size and now - oldest < self.batch_wait_s:
            return
        for seq in list(self.waiting[:size]):
            self._reuse_prefix(seq)
            if seq.tier_rank == PREMIUM and not self._reserve(seq):
                self._unshare(seq)
                break
            self._start(seq)

    def _join(self, seq: Sequence, plan: _Plan) -> bool:
        """Continuous mode: let `seq` join with a first chunk. False: it (and all after it) wait."""
        premium = seq.tier_rank == PREMIUM
        if len(self.running) >= self.max_running and not premium:
            return False
        self._reuse_prefix(seq)
        n = min(seq.pending, plan.left)
        if premium:
            if not self._reserve(seq, plan):
                self._unshare(seq)
                return False
        else:
            n = self._fit(seq, n, spare=self.watermark)
            need = self.blocks_for(seq.num_computed + n) - len(seq.blocks)
            if not self._free_up(need + self.watermark, seq, plan, lower_tier_only=True):
                self._unshare(seq)
                return False
            seq.blocks += self.blocks.allocate(need)
        self._start(seq)
        plan.set(seq, n)
        return True

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Prefix caching: take over the cached blocks that hold the start of `seq`'s tokens
        (leaving at least its last token to compute: the next token is sampled from it)."""
        if not self.prefix_caching or seq.num_computed or seq.blocks:
            return
        tokens = seq.prompt_ids + seq.output_ids
        parent = 0
        for b in range((len(tokens) - 1) // self.block_size):
            h = prefix_hash(parent, tokens[b * self.block_size : (b + 1) * self.block_size])
            block = self.blocks.share(h)
            if block is None:
                break
            seq.blocks.append(block)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed = len(seq.blocks) * self.block_size
        self.counters["prefix_hit_tokens"] += seq.num_computed

    def _unshare(self, seq: Sequence) -> None:
        """Undo `_reuse_prefix` for a sequence that could not join after all: it waits holding nothing."""
        if seq.blocks:
            self.counters["prefix_hit_tokens"] -= seq.num_computed
            self.blocks.release(seq.blocks)
            seq.block_hashes.clear()
            seq.num_computed = 0

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = min(seq.num_computed // self.block_size, len(seq.blocks))
        if len(seq.block_hashes) >= full:
            return
        tokens = seq.prompt_ids + seq.output_ids
        parent = seq.block_hashes[-1] if seq.block_hashes else 0
        for b in range(len(seq.block_hashes), full):
            parent = prefix_hash(parent, tokens[b * self.block_size : (b + 1) * self.block_size])
            seq.block_hashes.append(parent)
            self.blocks.register(seq.blocks[b], parent)

    def _fit(self, seq: Sequence, n: int, spare: int) -> int:
        """A prefill chunk of up to `n` tokens, shortened to what free blocks (less `spare`) hold
        when that is at least one token: a shorter chunk now beats preempting someone."""
        room = (len(seq.blocks) + self.blocks.num_free - spare) * self.block_size - seq.num_computed
        return min(n, room) if room > 0 else n

    def _reserve(self, seq: Sequence, plan: _Plan | None = None) -> bool:
        """Premium: all the blocks the sequence can ever need, taken now."""
        need = self.blocks_for(len(seq.prompt_ids) + seq.max_tokens) - len(seq.blocks)
        if not self._free_up(need, seq, plan, lower_tier_only=True):
            return False
        seq.blocks += self.blocks.allocate(need)
        return True

    def _start(self, seq: Sequence) -> None:
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def _grow(self, seq: Sequence, tokens: int, plan: _Plan) -> bool:
        """Blocks for `tokens` tokens of a running sequence; False if it must wait (or was preempted)."""
        need = self.blocks_for(tokens) - len(seq.blocks)
        if need <= 0:
            return True
        if not self._free_up(need, seq, plan, lower_tier_only=False):
            if seq.tier_rank != PREMIUM:
                self._preempt(seq, plan)  # the least urgent itself: give its blocks to others
            return False
        seq.blocks += self.blocks.allocate(need)
        return True

    def _free_up(self, need: int, seq: Sequence, plan: _Plan | None, lower_tier_only: bool) -> bool:
        """Make `need` blocks free by preempting running sequences less urgent than `seq` (never
        premium; with `lower_tier_only`, only those of a lower tier). False, preempting nobody, if
        even that would not be enough."""
        if self.blocks.num_free >= need:
            return True
        victims = sorted(
            (
                s
                for s in self.running
                if s is not seq
                and s.tier_rank != PREMIUM
                and s.key > seq.key
                and (s.tier_rank > seq.tier_rank or not lower_tier_only)
            ),
            key=lambda s: s.key,
            reverse=True,
        )
        if self.blocks.num_free + sum(self.blocks.freed_by(s.blocks) for s in victims) < need:
            return False
        for victim in victims:
            if self.blocks.num_free >= need:
                break
            self._preempt(victim, plan)
        return True

    def _preempt(self, seq: Sequence, plan: _Plan | None) -> None:
        """Free the sequence's blocks and queue it again; its tokens are recomputed when it rejoins."""
        self.running.remove(seq)
        self.blocks.release(seq.blocks)
        seq.block_hashes.clear()
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.preemptions += 1
        bisect.insort(self.waiting, seq, key=lambda s: s.key)
        if plan is not None:
            plan.drop(seq)
        self.counters["preemptions"] += 1
        self.counters[f"preemptions_tier{seq.tier_rank}"] += 1
