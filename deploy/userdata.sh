#!/bin/bash
# EC2 user data (rendered by deploy/ec2.py; $${NAME} placeholders are filled in there).
# Runs once, as root, on the first boot of the GPU instance: checks the NVIDIA driver, Docker and
# the NVIDIA container toolkit (installs what is missing), fetches the project, writes .env and
# starts the stack with the AWS override (model repository in S3, credentials from the instance
# profile). Progress: /var/log/mtc-setup.log; `cloud-init status --wait` blocks until it is done.
# No secret is in this script: the API keys and the dashboard login are read from the SSM parameter
# ${secrets_parameter} (SecureString) by deploy/with_secrets.py at every start of mtc.service.
set -euo pipefail
exec > >(tee -a /var/log/mtc-setup.log) 2>&1
echo "==> mtc setup started $$(date -u +%FT%TZ)"

export DEBIAN_FRONTEND=noninteractive
APP_DIR=/opt/mtc

# 1. NVIDIA driver: the Deep Learning Base AMI ships it; fail early and clearly otherwise.
if ! nvidia-smi; then
    echo "error: nvidia-smi failed: use a GPU instance type and an AMI with the NVIDIA driver" >&2
    exit 1
fi

# 2. Docker Engine + compose plugin.
if ! command -v docker >/dev/null; then
    apt-get update -q
    apt-get install -y -q docker.io
fi
if ! docker compose version >/dev/null 2>&1; then
    apt-get update -q
    apt-get install -y -q docker-compose-v2 || apt-get install -y -q docker-compose-plugin
fi
# The compose files use `!reset` / `!override` (compose 2.24+); distribution packages can be older.
need=2.24.0
have=$$(docker compose version --short 2>/dev/null | tr -d v || echo 0)
if [ "$$(printf '%s\n' "$$need" "$$have" | sort -V | head -1)" != "$$need" ]; then
    mkdir -p /usr/local/lib/docker/cli-plugins
    curl -fsSL https://github.com/docker/compose/releases/download/v2.29.7/docker-compose-linux-x86_64 \
        -o /usr/local/lib/docker/cli-plugins/docker-compose
    chmod +x /usr/local/lib/docker/cli-plugins/docker-compose
fi
docker compose version
systemctl enable --now docker

# 3. NVIDIA container toolkit, so `deploy.resources.reservations.devices` reaches the GPU.
if ! command -v nvidia-ctk >/dev/null; then
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
        | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
        | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
        > /etc/apt/sources.list.d/nvidia-container-toolkit.list
    apt-get update -q
    apt-get install -y -q nvidia-container-toolkit
fi
nvidia-ctk runtime configure --runtime=docker
systemctl restart docker
# The GPU must be visible from a container before Triton is started on it.
docker run --rm --gpus all ubuntu:22.04 nvidia-smi -L

# The AWS CLI reads the secrets parameter (the Deep Learning Base AMI ships it).
if ! command -v aws >/dev/null; then
    apt-get update -q
    apt-get install -y -q awscli
fi

# 4. The project.
if [ ! -d "$$APP_DIR/.git" ]; then
    apt-get install -y -q git
    git clone --depth 1 --branch "${git_ref}" "${repo_url}" "$$APP_DIR"
fi
cd "$$APP_DIR"

# 5. Settings. No credentials: Triton and the facade use the instance profile (IMDSv2); the API keys
#    and the dashboard login come from the secrets parameter at start (section 6).
#    MinIO does not run in AWS mode; its required variables only need a value (random, in case someone
#    starts it by hand).
umask 077
cat > .env <<ENV
AWS_DEFAULT_REGION=${region}
MTC_MODELS_BUCKET=${models_bucket}
MTC_MODELS_PREFIX=${models_prefix}
MTC_UPLOADS_BUCKET=${uploads_bucket}
MTC_BIND_ADDRESS=0.0.0.0
MTC_DASHBOARD_ORIGINS=$$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token \
    | xargs -I{} curl -fsS -H 'X-aws-ec2-metadata-token: {}' http://169.254.169.254/latest/meta-data/public-ipv4 || echo localhost):5006
MINIO_ROOT_USER=unused-in-aws-mode
MINIO_ROOT_PASSWORD=$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
MINIO_TRITON_PASSWORD=$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
MINIO_API_PASSWORD=$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
MINIO_PUBLISHER_PASSWORD=$$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
ENV

# 6. Start, and start again on every boot.
cat > /etc/systemd/system/mtc.service <<UNIT
[Unit]
Description=Multi-task classification platform (docker compose)
Requires=docker.service
After=docker.service network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory=$$APP_DIR
ExecStart=/usr/bin/python3 deploy/with_secrets.py --parameter ${secrets_parameter} --region ${region} -- /usr/bin/docker compose -f docker-compose.yml -f docker-compose.aws.yml up -d --build --wait
ExecStop=/usr/bin/python3 deploy/with_secrets.py --parameter ${secrets_parameter} --region ${region} -- /usr/bin/docker compose -f docker-compose.yml -f docker-compose.aws.yml down
TimeoutStartSec=1800

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now mtc.service
echo "==> mtc setup finished $$(date -u +%FT%TZ)"
