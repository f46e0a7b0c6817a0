-- A person's tokens (parentless: given by an admin or a forge login), by user, apart from the
-- tokens derived from them (plan-phase and run tokens, which pile up at up to an agent's hourly
-- limit): judging a mint for a person (`Person::may_receive`) reads the user's parentless
-- tokens in the minting transaction, and through `tokens_by_user` it walked the derived ones too.
CREATE INDEX tokens_of_persons ON tokens (user_name, created_at) WHERE parent_id IS NULL;
