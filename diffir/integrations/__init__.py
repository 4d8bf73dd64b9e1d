"""Using DiffIR checkpoints in other tools: :mod:`diffir.integrations.spandrel` (ComfyUI, chaiNNer,
InvokeAI load models through spandrel) and :mod:`diffir.integrations.comfyui` (a ComfyUI node)."""
