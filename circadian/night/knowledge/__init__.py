"""How what the user says becomes knowledge the model is trained on.

A night reads every conversation it has not learned yet (chat turns grouped by session, imported
conversations, inbox chats), with every turn in order, and asks the generators for facts:

- `parse`: teacher-free, for small models: spaCy's English pipeline finds the personal statements
  (first-person clauses, facts about the people and things in the user's life, answers to the
  assistant's questions), restates each one in the second person, and makes questions about each of
  its names, numbers, dates and things (wh-questions with do-support, "what do you know about ...",
  reverse questions);
- `rules`: the hand-written patterns of the first version, a high-precision source among others;
- `model`: the configured model (or `sleep.teacher`) writes the facts and questions as JSON.

Every fact is grounded: its answer words must be in what the user said (the subject may come from
the assistant's question), else it is rejected into the report. Facts about the same subject and
relation replace earlier ones (updates). `rows` turns facts into training, validation and probe rows,
the probes in wordings no training row was made with.
"""
