"""``vlmq index DIR_OR_MANIFEST`` and ``vlmq jobs submit|get|wait``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.client import Api, ApiFailure, default_api_key, videos_in

app = typer.Typer(help="vlmq: InternVL vision-language jobs from the command line.", no_args_is_help=True)
jobs = typer.Typer(help="Single jobs.", no_args_is_help=True)
app.add_typer(jobs, name="jobs")
console = Console(stderr=True, soft_wrap=True)  # log lines stay whole when not on a terminal

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="VLMQ_API_URL", help="Base URL of the API.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key; default VLMQ_API_KEY or .run/api-key.")]


def _api(api_url: str, api_key: str | None) -> Api:
    return Api(api_url, api_key or default_api_key())


def _print(document: dict) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _fail(error: ApiFailure) -> None:
    console.print(f"[red]error:[/red] {error}")
    raise typer.Exit(1)


@app.command()
def index(
    source: Annotated[Path, typer.Argument(exists=True, help="A folder of videos, or a JSONL manifest.")],
    name: Annotated[str, typer.Option(help="The index's name; default the folder's or file's name.")] = "",
    segment_s: Annotated[float, typer.Option(help="Segment length in seconds.")] = 10.0,
    frames_per_segment: Annotated[int, typer.Option(help="Frames the model sees per segment.")] = 4,
    prompt: Annotated[str | None, typer.Option(help="Instruction for each segment's caption.")] = None,
    model: Annotated[str | None, typer.Option(help="Model id; default the API's default model.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where the export goes; default <index id>.jsonl.")] = None,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Upload a folder's videos (or send a manifest), index them, follow the progress, download the export."""
    api = _api(api_url, api_key)
    fields = {"name": name or source.stem, "segment_s": segment_s, "frames_per_segment": frames_per_segment,
              "prompt": prompt, "model": model}
    fields = {key: value for key, value in fields.items() if value is not None}
    try:
        if source.is_dir():
            files = videos_in(source)
            if not files:
                console.print(f"[red]no videos in {source}[/red]")
                raise typer.Exit(1)
            videos = []
            with _progress() as progress:
                task = progress.add_task("uploading", total=len(files), detail="")
                for path in files:
                    videos.append({"upload_id": api.upload(path), "external_id": str(path.relative_to(source))})
                    progress.advance(task)
            created = api.create_index(fields, videos=videos)
        else:
            created = api.create_index(fields, manifest=source)
        console.print(f"index {created['id']}: {created['counts']['videos_total']} videos")
        finished = _follow(api, created)
        destination = out or Path(f"{created['id']}.jsonl")
        size = api.download(f"/v1/video-indexes/{created['id']}/export", destination, format="jsonl")
    except ApiFailure as error:
        _fail(error)
    counts = finished["counts"]
    console.print(f"index {finished['id']} {finished['status']}: {counts['videos_done']} videos done, "
                  f"{counts['videos_failed']} failed, {counts['segments_done']} segments → {destination} ({size} bytes)")
    if counts["videos_failed"]:
        for video in api.get(f"/v1/video-indexes/{finished['id']}/videos", limit=200)["data"]:
            if video["status"] == "failed":
                console.print(f"  [yellow]{video['external_id']}[/yellow]: {video['error']['code']}: {video['error']['message']}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                    TimeElapsedColumn(), console=console)


def _follow(api: Api, index: dict) -> dict:
    """A live bar on a terminal; one line per change otherwise (logs, CI)."""
    total = index["counts"]["videos_total"]

    def detail(current: dict) -> str:
        counts = current["counts"]
        return f"{counts['videos_failed']} failed · {counts['segments_done']} segments · {current['status']}"

    if not console.is_terminal:
        return api.follow_index(index["id"], lambda current: console.print(
            f"progress {current['counts']['videos_done'] + current['counts']['videos_failed']}/{total} videos · "
            + detail(current)))
    with _progress() as progress:
        task = progress.add_task("indexing", total=total, detail="")
        return api.follow_index(index["id"], lambda current: progress.update(
            task, completed=current["counts"]["videos_done"] + current["counts"]["videos_failed"], detail=detail(current)))


@jobs.command("submit")
def submit(
    files: Annotated[list[Path] | None, typer.Argument(exists=True, help="Images or one video.")] = None,
    task: Annotated[str, typer.Option(help="caption, vqa, grounding, chat, video_caption, video_qa.")] = "caption",
    prompt: Annotated[str | None, typer.Option(help="The question or phrase.")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    url: Annotated[list[str] | None, typer.Option(help="Media by URL instead of files (repeatable).")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="KEY=VALUE job option (repeatable).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end and print it.")] = False,
    timeout_s: Annotated[float, typer.Option(help="How long --wait waits.")] = 600,
    api_url: ApiUrl = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Create a job from files or URLs; print it (or its final state with --wait)."""
    options = {}
    for item in option or []:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    request = {"task": task, "prompt": prompt, "model": model, "options": options}
    request = {key: value for key, value in request.items() if value not in (None, {})}
    if url:
        request["input"] = {"items": [{"url": item} for item in url]} if len(url) > 1 else {"url": url[0]}
    api = _api(api_url, api_key)
    try:
        job = api.submit_job(request, [] if url else list(files or []))
        if wait:
            job = api.wait_job(job["id"], timeout_s=timeout_s)
    except ApiFailure as error:
        _fail(error)
    _print(job)


@jobs.command("get")
def get(job_id: str, api_url: ApiUrl = "http://127.0.0.1:8000", api_key: ApiKey = None) -> None:
    """Print a job."""
    try:
        _print(_api(api_url, api_key).get(f"/v1/jobs/{job_id}"))
    except ApiFailure as error:
        _fail(error)


@jobs.command("wait")
def wait_for(job_id: str, timeout_s: Annotated[float, typer.Option()] = 600,
             api_url: ApiUrl = "http://127.0.0.1:8000", api_key: ApiKey = None) -> None:
    """Wait until a job ends; print it. Exit status 1 unless it succeeded."""
    try:
        job = _api(api_url, api_key).wait_job(job_id, timeout_s=timeout_s)
    except ApiFailure as error:
        _fail(error)
    _print(job)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
