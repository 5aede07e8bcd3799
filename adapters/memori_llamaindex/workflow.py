"""`MemoriAgentWorkflow`: an `AgentWorkflow` whose agents each keep their own long-term memory."""

from __future__ import annotations

from llama_index.core.agent.workflow import AgentWorkflow
from llama_index.core.agent.workflow.workflow_events import AgentInput, AgentSetup
from llama_index.core.workflow import Context, StartEvent, step

from memori_llamaindex.memory import MemoriMemory
from memori_llamaindex.messages import is_memory_block_message

__all__ = ["MemoriAgentWorkflow"]


class MemoriAgentWorkflow(AgentWorkflow):
    """An `AgentWorkflow` that tells its `MemoriMemory` which agent is acting.

    `AgentWorkflow` gives all agents one memory (`ctx.store["memory"]`) and never tells it who
    is running. This subclass does, so a `MemoriMemory` with `agent_process_ids` recalls each
    agent's own memories into that agent's prompt and records what each agent hears and says
    under its process id, while the transcript (which handoffs need) stays shared:

    - at the start of a run, the agent that will receive the user message is activated before
      the message is stored;
    - before an agent's step, if another agent was active (a handoff), the new agent is
      activated, the user message it now acts on is recorded for it, and the memory block in
      its input is replaced by its own recall.

    The active agent is a field of the memory and the memory is written back to the context,
    so it survives `ctx.to_dict()` / `Context.from_dict()`. Any other memory is left as is,
    so this class behaves exactly like `AgentWorkflow` without a `MemoriMemory`.

    Example::

        memory = MemoriMemory(
            "user-123", "studio",
            agent_process_ids={"researcher": "research-agent", "writer": "writing-agent"},
        )
        workflow = MemoriAgentWorkflow(agents=[researcher, writer], root_agent="researcher")
        await workflow.run(user_msg="...", memory=memory)
    """

    async def _activate(self, ctx: Context, agent_name: str, *, handoff: bool) -> bool:
        """Make `agent_name` the memory's active agent; False if there was nothing to change."""
        memory = await ctx.store.get("memory", default=None)
        if not isinstance(memory, MemoriMemory) or memory.active_agent == agent_name:
            return False
        await memory.aactivate_agent(agent_name, handoff=handoff)
        # Written back: a durable state store hands out a fresh copy on every read.
        await ctx.store.set("memory", memory)
        return True

    async def _init_context(self, ctx: Context, ev: StartEvent) -> None:
        # AgentWorkflow's own set-up (memory, current agent) runs first; `init_run` calls it
        # right before it stores the user message, which must be recorded for this agent.
        await super()._init_context(ctx, ev)
        await self._activate(ctx, await ctx.store.get("current_agent_name"), handoff=False)

    @step
    async def setup_agent(self, ctx: Context, ev: AgentInput) -> AgentSetup:
        """Activate the agent about to act; after a handoff, give it its own memory block."""
        if await self._activate(ctx, ev.current_agent_name, handoff=True):
            # The input was assembled while the previous agent was active: swap its memory
            # block for the new agent's recall, keep the shared transcript.
            memory: MemoriMemory = await ctx.store.get("memory")
            recalled = await memory.aget(input=await ctx.store.get("user_msg_str", default=None))
            block = [m for m in recalled[:1] if is_memory_block_message(m)]
            rest = [m for m in ev.input if not is_memory_block_message(m)]
            ev = AgentInput(input=[*block, *rest], current_agent_name=ev.current_agent_name)
        setup: AgentSetup = await super().setup_agent(ctx, ev)
        return setup
