"""The production files work as shipped (issue 19): parsed and checked against the shipped GPU job
they run. No cluster or Docker daemon is needed: these are the facts a cluster would trip over."""

import re

import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def _rayjob():
    return yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())


def test_the_rayjob_worker_group_can_hold_the_jobs_compute_and_autoscales(monkeypatch):
    monkeypatch.chdir(REPO)
    job = yaml.safe_load((REPO / "jobs" / "cifar100_cct7.yaml").read_text())
    c = job["compute"]
    spec = _rayjob()["spec"]
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert spec["activeDeadlineSeconds"] > 0  # never waits forever
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    per_pod = min(int(limits["cpu"]) // int(c["cpus_per_worker"]), int(limits["nvidia.com/gpu"]))
    assert per_pod >= 1 and group["maxReplicas"] * per_pod >= c["num_workers"]  # every training worker fits
    assert group["minReplicas"] == 0  # idle GPUs are given back


def test_images_volumes_and_the_bucket_agree_with_the_job():
    job = yaml.safe_load((REPO / "jobs" / "cifar100_cct7.yaml").read_text())
    spec = _rayjob()["spec"]
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]] + \
        [g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pods:
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert job["dataset"]["root"].startswith("/data/") and "/data" in mounts  # the dataset is mounted
        assert "/scratch" in mounts  # captured features have a volume
        assert "/dev/shm" in mounts  # the DataLoader workers' shared memory (issue 29, item 8)
        shm = next(v for v in pod["volumes"] if v["name"] == next(
            m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"))
        assert shm["emptyDir"]["medium"] == "Memory"
        read_only = any(m["mountPath"] == "/data" and m.get("readOnly") for m in pod["containers"][0]["volumeMounts"])
        assert not (read_only and job["dataset"].get("download")), "download: true into a read-only /data"
        assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "snp-minio"}}]
        image = pod["containers"][0]["image"]
        assert not image.endswith(":latest")
    bucket = job["storage"]["root"][5:].split("/")[0]
    compose = (DEPLOY / "docker-compose.minio.yml").read_text()
    assert f"mc mb --ignore-existing local/{bucket}" in compose  # the bucket the job writes is created
    images = re.findall(r"image: (\S+)", compose)
    assert images and all(i.startswith("quay.io/minio/") and ":RELEASE." in i for i in images)  # pinned, quay.io
    server = [i for i in images if i.startswith("quay.io/minio/minio:")]
    # RELEASE tags sort by date as text: the server is no older than the fix for CVE-2025-62506
    assert server and all(i.split(":RELEASE.")[1] >= "2025-10-15T17-29-55Z" for i in server)
    assert "mc admin user add" in compose and "policy attach" in compose  # a bucket-scoped user, not root
    assert "MINIO_ROOT_USER: ${AWS_ACCESS_KEY_ID" not in compose  # the service's keys are not MinIO's root


def test_the_dockerfile_builds_the_package_on_rays_gpu_image():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu$", text, re.M)
    assert "pip install" in text and "COPY" in text and "SNP_FEATURES_DIR=/scratch" in text
    version = re.search(r'"ray\[default,train,tune\]==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"rayproject/ray:{version}-" in text  # the image's Ray is the package's Ray


def test_no_deploy_file_sets_the_single_node_switch():
    for f in DEPLOY.iterdir():
        if f.name != "local.sh":  # the local script binds loopback on purpose
            assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in f.read_text(), f.name
