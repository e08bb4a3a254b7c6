"""The notifier's Celery app: ``celery -A services.notifier.app worker``. Consumes only its queue."""

from __future__ import annotations

from celery.signals import worker_ready

from shared.config.settings import get_notifier_settings
from shared.queue import DELIVER_TASK, NOTIFY_QUEUE, create_celery
from shared.queue.worker_hooks import install_worker_hooks

settings = get_notifier_settings()
app = create_celery(settings, name="vlmq-notifier", queues=[NOTIFY_QUEUE])
install_worker_hooks(settings, role="notifier")


@worker_ready.connect
def start_relay(**_kwargs) -> None:
    from services.notifier.relay import OutboxRelay

    OutboxRelay(app, settings).start()


@app.task(name=DELIVER_TASK, ignore_result=True)
def deliver_task(delivery_id: str, token: str | None = None) -> str | None:
    from services.notifier.deliver import deliver

    return deliver(delivery_id, token=token, settings=settings)
