"""The OpenAI-compatible surface: chat completions, Files and Batches over ordinary vlmq jobs."""

from services.api.openai.batches import BatchCreate
from services.api.openai.chat_request import ChatCompletionRequest

# Request bodies the routes read themselves, for the OpenAPI document's components.
OPENAI_SCHEMAS = (ChatCompletionRequest, BatchCreate)
