"""The day: the assistant that answers, the interactive chat, and importing transcripts."""
