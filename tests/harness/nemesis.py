"""Faults for a `hosts.Workspace`, drawn from a seeded random generator (Jepsen's nemesis).

Each `step` either heals everything or adds one fault, at most `MOST_AT_ONCE` at a time:

- an agent cut off from every member (both ways, or one way either way);
- a member unplugged (cut off from everyone), or cut off from the other members only;
- the majority of members unplugged;
- all hosts split at random into two sides;
- an agent SIGKILLed and started again at once (it lists the graph again when it can),
  or SIGSTOPped;
- a member SIGKILLed or SIGSTOPped.

A heal undoes every cut, resumes every stopped process and starts every killed member.
The same seed gives the same faults in the same order (what they meet depends on timing).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from .hosts import AGENTS, MEMBERS, Workspace

MOST_AT_ONCE = 2
"""Faults at once before the next step must heal: enough for cuts on top of kills."""
HEAL_WEIGHT = 3
"""A heal is this many times as likely as each kind of fault."""


@dataclass
class Nemesis:
    ws: Workspace
    rng: random.Random
    done: list[str] = field(default_factory=list)
    """Every step, in order, as it was described."""
    active: int = 0
    stopped_agents: set[int] = field(default_factory=set)
    stopped_members: set[int] = field(default_factory=set)
    killed_members: set[int] = field(default_factory=set)

    def step(self) -> str:
        """Heal, or add one fault; what was done."""
        faults = self._faults()
        choices = [*faults, *[self.heal] * (HEAL_WEIGHT if self.active else 0)]
        if self.active >= MOST_AT_ONCE:
            choices = [self.heal]
        said = self.rng.choice(choices)()
        self.done.append(said)
        return said

    def heal(self) -> str:
        """Every cut undone, every stopped process resumed, every killed member started."""
        self.ws.heal()
        for i in sorted(self.stopped_agents):
            self._signal(self.ws.agents[i].proc, signal.SIGCONT)
        for i in sorted(self.stopped_members):
            self._signal(self.ws.etcd.members[i].proc, signal.SIGCONT)
        for i in sorted(self.killed_members):
            self.ws.restart_member(i)
        self.stopped_agents.clear()
        self.stopped_members.clear()
        self.killed_members.clear()
        self.active = 0
        return "heal"

    # --- the faults ----------------------------------------------------------------------------

    def _faults(self) -> list[Callable[[], str]]:
        return [
            self._agent_cut_off,
            self._agent_cut_off_one_way,
            self._member_unplugged,
            self._member_cut_from_members,
            self._majority_unplugged,
            self._random_halves,
            self._agent_killed,
            self._agent_stopped,
            self._member_killed,
            self._member_stopped,
        ]

    def _fault(self, said: str) -> str:
        self.active += 1
        return said

    def _agent_cut_off(self) -> str:
        agent = self.rng.choice(AGENTS)
        self.ws.cut(agent, MEMBERS)
        return self._fault(f"{agent} cut off from etcd")

    def _agent_cut_off_one_way(self) -> str:
        agent = self.rng.choice(AGENTS)
        if self.rng.random() < 0.5:
            self.ws.cut(agent, MEMBERS, one_way=True)
            return self._fault(f"{agent} -> etcd dropped")
        self.ws.cut(MEMBERS, agent, one_way=True)
        return self._fault(f"etcd -> {agent} dropped")

    def _member_unplugged(self) -> str:
        member = self.rng.choice(MEMBERS)
        self.ws.unplug(member)
        return self._fault(f"{member} unplugged")

    def _member_cut_from_members(self) -> str:
        member = self.rng.choice(MEMBERS)
        self.ws.cut(member, [m for m in MEMBERS if m != member])
        return self._fault(f"{member} cut off from the other members")

    def _majority_unplugged(self) -> str:
        majority = self.rng.sample(MEMBERS, 2)
        self.ws.unplug(*majority)
        return self._fault(f"{' and '.join(majority)} unplugged")

    def _random_halves(self) -> str:
        hosts = [*MEMBERS, *AGENTS]
        self.rng.shuffle(hosts)
        at = self.rng.randrange(1, len(hosts))
        one, other = sorted(hosts[:at]), sorted(hosts[at:])
        self.ws.cut(one, other)
        return self._fault(f"{','.join(one)} | {','.join(other)}")

    def _agent_killed(self) -> str:
        i = self.rng.randrange(len(self.ws.agents))
        self._signal(self.ws.agents[i].proc, signal.SIGCONT)
        self.ws.kill_agent(i)
        self.stopped_agents.discard(i)
        self.ws.agents[i].start(wait=False)  # back when it can list the graph
        return f"{AGENTS[i]} killed and started again"

    def _agent_stopped(self) -> str:
        i = self.rng.randrange(len(self.ws.agents))
        self._signal(self.ws.agents[i].proc, signal.SIGSTOP)
        self.stopped_agents.add(i)
        return self._fault(f"{AGENTS[i]} stopped")

    def _member_killed(self) -> str:
        i = self.rng.randrange(len(self.ws.etcd.members))
        if i in self.killed_members:
            return "nothing (that member is down already)"
        self.ws.etcd.stop_member(i, signal.SIGKILL)
        self.stopped_members.discard(i)
        self.killed_members.add(i)
        return self._fault(f"{MEMBERS[i]} killed")

    def _member_stopped(self) -> str:
        i = self.rng.randrange(len(self.ws.etcd.members))
        if i in self.killed_members:
            return "nothing (that member is down already)"
        self._signal(self.ws.etcd.members[i].proc, signal.SIGSTOP)
        self.stopped_members.add(i)
        return self._fault(f"{MEMBERS[i]} stopped")

    @staticmethod
    def _signal(proc: object, signum: int) -> None:
        if proc is not None and proc.poll() is None:  # type: ignore[attr-defined]
            proc.send_signal(signum)  # type: ignore[attr-defined]
