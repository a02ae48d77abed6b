"""Deploying Tillflow on its VPS: the host's side, outside the image.

``redeploy``     move the work tree to the newest main, rebuild, bring it up,
                 wait for health, smoke-check; roll back on any failure
``post-receive`` the bare repository's hook: a push to main runs redeploy
``webhook``      ``python3 -m deploy.webhook``: GitHub or Gitea push events,
                 signed with HMAC-SHA256, run redeploy

Standard library only: these run with the host's python3 and bash, where
Tillflow's own dependencies are not installed. See deploy/README.md.
"""
