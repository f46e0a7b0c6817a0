stack "prod/app" {
  dir                = "stacks/prod/app"
  production         = true
  required_approvals = 2
}
protect {
  types     = ["aws_elasticsearch_domain"]
  addresses = ["module.network.*"]
}
allow_destroy "module.legacy.aws_db_instance.old" {
  reason = "decommissioned; final snapshot taken"
}
credentials "plan"  { env_from = ["AWS_PLAN_ROLE_ARN"] }
credentials "apply" { env_from = ["AWS_APPLY_ROLE_ARN"] }
