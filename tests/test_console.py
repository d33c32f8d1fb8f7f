"""What pbgan prints shows paths, names, hints and messages as typed: rich markup is never read
from them."""
from pbgan_core.console import console, errors, progress_bar, sequence_progress


def test_printed_text_keeps_its_brackets(capsys):
    console.print("generated images (install pbgan[demo] for real photos) in /tmp/a[bold]b[/bold]")
    errors.print("error: /tmp/[red]x[/red] is missing")
    out, err = capsys.readouterr()
    assert "install pbgan[demo] for real photos) in /tmp/a[bold]b[/bold]" in out
    assert "error: /tmp/[red]x[/red] is missing" in err


def test_progress_bars_show_names_as_typed():
    bar = progress_bar(console)
    bar.add_task("run[1]", total=10, losses={})
    assert bar.columns[0].render(bar.tasks[0]).plain == "run[1]"
    progress, start = sequence_progress(["a[b]c"], 10)
    progress.disable = False
    start("a[b]c")
    assert progress.columns[0].render(progress.tasks[0]).plain == "task 1 of 1: a[b]c"


def test_cli_tables_keep_brackets_in_paths(cli, monkeypatch):
    monkeypatch.setenv("PBGAN_DATA_HOME", "home[demo]")
    _, out, _ = cli("data", "list")
    assert "data home: home[demo])" in out
