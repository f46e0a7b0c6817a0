-- Forge identities of users (`airlock user create NAME --forge-login github:LOGIN`): a pull
-- request's author, as the CI job claims it, maps to the airlock user who may then not approve
-- the run of their own change. A login (`forge:login`, lower case) belongs to one user at most.
CREATE TABLE forge_logins (
    login       TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL REFERENCES users(name),
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE INDEX forge_logins_by_user ON forge_logins (user_name, login);
