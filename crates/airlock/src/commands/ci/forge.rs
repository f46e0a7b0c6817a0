//! The GitHub and GitLab REST clients `airlock ci` uses (being written).
