"""What the recipes share: script arguments, parsing with clear errors, processes, prompt data sets, models, verifiers.

The recipes import this module from their own folder (`python recipes/<job>.py`, `accelerate launch recipes/<job>.py`
and `trl-power <job>` all run a recipe as a script, which puts its folder first on `sys.path`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ScriptArguments, TrlParser

from trl_power.data import COLUMNS as POWER_COLUMNS
from trl_power.data import with_power_metadata
from trl_power.prompts import format_prompt, template_fields
from trl_power.sampling import PowerSamplingConfig
from trl_power.sampling.vllm_engine import VLLMArguments

#: Besides `accelerate launch`'s own options, what `trl-power <job>` hands to the launcher. A recipe config may hold
#: launcher options (as with `trl sft`); the recipe itself ignores them.
LAUNCHER_OPTIONS = ("accelerate_config",)


@dataclass
class PowerScriptArguments(ScriptArguments):
    """Arguments of every trl-power recipe: TRL's `ScriptArguments` (`dataset_name`, `dataset_config`,
    `dataset_train_split`, `dataset_test_split`, ...) and how prompts, answers and verifiers are read.

    Args:
        dataset_name: A Hub data set (`HuggingFaceH4/MATH-500`), a local `.json`/`.jsonl`/`.parquet`/`.csv` file (its
            rows are the split asked for), a folder written with `save_to_disk`, or the output folder of
            `recipes/power_sample.py` (its merged `dataset/`).
        prompt_column: Column holding the problem / prompt text (or conversational messages).
        prompt_template: How a row becomes the model's prompt. `None`: the `prompt_column` as it is. A name of
            `trl_power.prompts.PROMPT_TEMPLATES` (`qwen_math`: the Qwen2.5-Math chain-of-thought chat prompt;
            `reasoning_with_sampling`: the plain prompt of the power-sampling reference code). Or a format string in
            which `{prompt}` is the prompt column and `{name}` any other column, e.g. `"Question: {question}\\nAnswer:"`.
        answer_column: Column with the gold answers, for the `math` verifier (MATH-500: `answer`; MATH: `solution`,
            its last boxed answer; GSM8K: `answer`, after `####`).
        verifier: How answers are checked: `math` (last `\\boxed{}` answer vs `answer_column`, with math-verify), an
            embedded task name (`aligned`, `misaligned`: the task's own verifier), or `None` (no checking).
        max_prompts: Use only the first N rows of the data set (quick runs). `None`: all of them.
    """

    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt / problem."})
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "None (prompt column as is), a template name (qwen_math, reasoning_with_sampling) or a format "
            "string with {prompt} and other {column} fields."
        },
    )
    answer_column: str | None = field(
        default=None, metadata={"help": "Column with the gold answers (for verifier: math)."}
    )
    verifier: str | None = field(
        default=None,
        metadata={
            "help": "math, an embedded task name (aligned, misaligned), or None (answers are not checked)."
        },
    )
    max_prompts: int | None = field(
        default=None, metadata={"help": "Use only the first N rows of the data set (None: all)."}
    )


@dataclass
class _OutputDir:
    output_dir: str = "power-samples"


# Bases in this order so that the fields come as _OutputDir's, PowerSamplingConfig's, VLLMArguments' (a dataclass
# orders fields from the last base to the first): `output_dir` is the first positional field, as in TRL's configs.
@dataclass
class PowerSampleConfig(VLLMArguments, PowerSamplingConfig, _OutputDir):
    """How to power-sample a prompt data set: every `PowerSamplingConfig` field (`method`, `alpha`, `max_new_tokens`,
    `block_size`, `mcmc_steps`, `num_particles`, `num_samples_per_prompt`, `seed`, ...), the engine (`use_vllm` and
    the `vllm_*` settings of `trl_power.sampling.vllm_engine.VLLMArguments`) and where the result goes.

    Args:
        output_dir: Folder of the run: sampled shards as they finish (a rerun resumes), the manifest and the merged
            data set (`dataset/`).
        shard_size: Prompts per shard, the unit of work split across processes and of resumption. The rows depend on
            it (each shard has its own seed), not on the number of processes.
        merge_particles: With `return_all_particles`, one row per distinct completion of a prompt with the summed
            weight of its particles, weight-0 rows dropped (the same weighted distribution, fewer rows to train on).
        overwrite: Delete a previous run in `output_dir` made with other settings instead of refusing to continue.
        push_to_hub: Push the data set to the Hub as `hub_dataset_id` (log in first with `hf auth login`).
        hub_dataset_id: Repository id of the pushed data set, `user/name`.
        hub_private: Make the pushed data set private (`None`: the Hub's default).
    """

    output_dir: str = field(
        default="power-samples", metadata={"help": "Folder of the run (shards and dataset/)."}
    )
    shard_size: int = field(default=64, metadata={"help": "Prompts per shard (unit of work and resumption)."})
    merge_particles: bool = field(
        default=False,
        metadata={
            "help": "return_all_particles: merge a prompt's identical particles (summed weights), drop weight 0."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a previous run with other settings."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Push the data set to the Hub (hub_dataset_id)."}
    )
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub repository id, user/name."})
    hub_private: bool | None = field(default=None, metadata={"help": "Make the pushed data set private."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_vllm_arguments()
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("push_to_hub needs hub_dataset_id ('user/name').")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    def sampling_config(self) -> PowerSamplingConfig:
        """The `PowerSamplingConfig` part of this config."""
        return PowerSamplingConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(PowerSamplingConfig)}
        )


# ----- parsing ------------------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option with its default; the description (the recipe's docstring) as written."""


def build_parser(
    *dataclass_types: type, prog: str | None = None, description: str | None = None
) -> TrlParser:
    """A `TrlParser` whose `--help` shows every option with its default; fields without a `help` metadata get the
    description their class docstring gives them (`Args:` / `Parameters:` sections)."""
    parser = TrlParser(dataclass_types, prog=prog, description=description, formatter_class=_HelpFormatter)
    docs: dict[str, str] = {}
    for cls in dataclass_types:
        for klass in reversed(cls.__mro__):
            docs.update(_docstring_args(klass.__doc__ or ""))
    for action in parser._actions:
        if not action.help and action.dest in docs:
            action.help = docs[action.dest].replace("%", "%%")
    return parser


_SECTIONS = {
    "Args",
    "Arguments",
    "Parameters",
    "Attributes",
    "Returns",
    "Raises",
    "Example",
    "Examples",
    "Note",
}


def _docstring_args(doc: str) -> dict[str, str]:
    """{name: description} from the `name: text` / `name (`type`, ...):` entries of a Google-style docstring."""
    out: dict[str, str] = {}
    lines = doc.expandtabs().splitlines()
    entry = re.compile(r"^(\s*)(\w+)(?: \(.*\))?:(?:\s+(.*))?$")
    i = 0
    while i < len(lines):
        match = entry.match(lines[i])
        if not match:
            i += 1
            continue
        indent, name, text = len(match.group(1)), match.group(2), [match.group(3) or ""]
        i += 1
        if name in _SECTIONS:
            continue
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > indent:
            text.append(lines[i].strip())
            i += 1
        out.setdefault(name, " ".join(t for t in text if t))
    return out


def launcher_options() -> set[str]:
    """Option names of `accelerate launch` (without `--`), which a recipe config may hold for the launcher."""
    from accelerate.commands.launch import launch_command_parser

    names = {
        s.lstrip("-").replace("-", "_") for a in launch_command_parser()._actions for s in a.option_strings
    }
    return names | set(LAUNCHER_OPTIONS)


def parse_args(parser: TrlParser, args: list[str] | None = None) -> tuple[Any, ...]:
    """Parse the command line and its `--config` YAML into the parser's dataclasses.

    Keys that neither the recipe nor `accelerate launch` knows raise a `ValueError` naming them, with the closest
    known field; `accelerate launch` options (e.g. `num_processes`) are left to the launcher and ignored here."""
    return split_args(parser, args)[0]


def split_args(
    parser: TrlParser, args: list[str] | None = None
) -> tuple[tuple[Any, ...], list[str], list[str]]:
    """(dataclasses, launcher options from the config file, launcher options from the command line)."""
    *outputs, config_rest, cli_rest = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True
    )
    known = {a.dest for a in parser._actions}
    allowed = launcher_options()
    for where, rest in (("the config file", config_rest), ("the command line", cli_rest)):
        unknown, after_option = [], False
        for token in rest:
            if token.startswith("--"):
                name = token[2:].split("=", 1)[0]
                if name.replace("-", "_") not in allowed:
                    unknown.append(name)
                after_option = "=" not in token  # the next plain token is this option's value
            elif after_option:
                after_option = False
            else:
                unknown.append(token)
        if unknown:
            hints = [
                f"{u!r} (did you mean {m[0]!r}?)"
                if (m := difflib.get_close_matches(u, known, n=1))
                else repr(u)
                for u in unknown
            ]
            raise ValueError(f"Unknown field(s) in {where}: {', '.join(hints)}. --help lists every field.")
    return tuple(outputs), config_rest, cli_rest


# ----- processes ----------------------------------------------------------------------------------------------------


def init_processes() -> Any:
    """This process's `PartialState`. Launched with several processes on a machine without an accelerator, they
    form a gloo group on CPU (accelerate would otherwise start independent single processes)."""
    import torch
    from accelerate import PartialState

    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=several and not has_accelerator)


# ----- data ---------------------------------------------------------------------------------------------------------

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_data(script_args: PowerScriptArguments, split: str) -> Any:
    """One split of `dataset_name` (Hub name, local file, `save_to_disk` folder or power-sample output folder), its
    first `max_prompts` rows when that is set."""
    data = _load_split(script_args, split)
    if script_args.max_prompts is not None:
        data = data.select(range(min(script_args.max_prompts, len(data))))
    return data


def _load_split(script_args: PowerScriptArguments, split: str) -> Any:
    from datasets import DatasetDict, load_dataset, load_from_disk

    name = script_args.dataset_name
    if not name:
        raise ValueError(
            "dataset_name is not set: give a Hub data set name, a local .json/.jsonl/.parquet/.csv file or a saved "
            "data set folder (in the YAML config or with --dataset_name)."
        )
    if script_args.dataset_streaming:
        raise ValueError("dataset_streaming is not supported by the trl-power recipes.")
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix not in _FILE_BUILDERS:
            raise ValueError(f"Unsupported data file {name!r}: use one of {sorted(_FILE_BUILDERS)}.")
        return load_dataset(_FILE_BUILDERS[path.suffix], data_files={split: str(path)}, split=split)
    if path.is_dir():
        for folder in (path, path / "dataset"):  # a saved data set, or the output folder of power_sample.py
            if (folder / "state.json").exists() or (folder / "dataset_dict.json").exists():
                data = load_from_disk(str(folder))
                return data[_split(data, split, name)] if isinstance(data, DatasetDict) else data
        return with_power_metadata(load_dataset(str(path), split=split), path)
    if _looks_local(name):
        raise FileNotFoundError(f"dataset_name {name!r} looks like a local path but does not exist.")
    data = load_dataset(name, name=script_args.dataset_config)
    # A pushed teacher data set: its sampling metadata comes back from the repository's trl_power_dataset.json.
    return with_power_metadata(data[_split(data, split, name)], name)


def _split(data: Any, split: str, name: str) -> str:
    if split not in data:
        raise ValueError(f"Data set {name!r} has no split {split!r}; its splits are {list(data)}.")
    return split


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (`name` or `org/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in _FILE_BUILDERS


def load_prompts(script_args: PowerScriptArguments, split: str) -> Any:
    """The split as a prompt data set: a `prompt` column made by `prompt_template` from `prompt_column`, plus the
    other columns (the answers included). Missing columns raise a `ValueError` naming the data set's columns."""
    data = load_data(script_args, split)
    columns = data.column_names
    needed = [script_args.prompt_column]
    if script_args.answer_column:
        needed.append(script_args.answer_column)
    if script_args.verifier == "math" and not script_args.answer_column:
        raise ValueError("verifier: math needs answer_column, the column with the gold answers.")
    template = script_args.prompt_template
    needed += [f for f in template_fields(template) if f != "prompt"]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"Data set {script_args.dataset_name!r} (split {split!r}) has no column {missing[0]!r}; its columns are "
            f"{columns}. Set prompt_column / answer_column / prompt_template to match."
        )
    if len(data) == 0:
        raise ValueError(f"Data set {script_args.dataset_name!r} (split {split!r}) has no rows.")

    def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": format_prompt(template, row, script_args.prompt_column)}

    clash = [c for c in columns if c in POWER_COLUMNS and c not in ("prompt", script_args.answer_column)]
    return data.map(to_prompt, remove_columns=clash)


# ----- models and verifiers -----------------------------------------------------------------------------------------


def check_model(model_args: Any) -> str:
    """`model_name_or_path`, checked: set, and an existing folder when it is a local path."""
    name = model_args.model_name_or_path
    if not name:
        raise ValueError(
            "model_name_or_path is not set: give a Hub model id (e.g. Qwen/Qwen2.5-Math-1.5B) or a local folder, in "
            "the YAML config or with --model_name_or_path."
        )
    path = Path(name).expanduser()
    if path.exists():
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise FileNotFoundError(f"model_name_or_path {name!r} has no config.json or adapter_config.json.")
    elif _looks_local(name):
        raise FileNotFoundError(f"model_name_or_path {name!r} looks like a local folder but does not exist.")
    return name


def load_model(model_args: Any, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model on this process's device in eval mode, tokenizer with left padding), loaded as TRL's trainers load
    them (`trl.trainer.utils.create_model_from_path`: `dtype`, `attn_implementation`, `model_revision` and 4/8-bit
    quantisation from the `ModelConfig`), each process on its own device (data parallel, never spread by
    `device_map="auto"`). A folder with a PEFT adapter (e.g. a distilled student) loads its base model with the
    adapter attached (a `PeftModel`)."""
    from accelerate import PartialState
    from transformers import AutoTokenizer
    from trl import get_quantization_config
    from trl.trainer.utils import create_model_from_path

    name = check_model(model_args)
    kwargs: dict[str, Any] = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype or "auto",
        trust_remote_code=trust_remote_code,
        device_map={"": PartialState().device},
    )
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if _is_adapter(name, model_args.model_revision):
        import torch
        from peft import AutoPeftModelForCausalLM

        if kwargs["dtype"] != "auto":
            kwargs["dtype"] = getattr(torch, kwargs["dtype"])
        model = AutoPeftModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = create_model_from_path(name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def load_sampling_model(model_args: Any, config: Any) -> tuple[Any, Any]:
    """The model to sample from and its tokenizer: `load_model`'s transformers model, or with `config.use_vllm` a vLLM
    engine (`trl_power.sampling.vllm_engine.load_vllm_for_processes`: one per process under accelerate launch)."""
    if not getattr(config, "use_vllm", False):
        return load_model(model_args)
    from transformers import AutoTokenizer

    from trl_power.sampling.vllm_engine import load_vllm_for_processes

    name = check_model(model_args)
    if _is_adapter(name, model_args.model_revision):
        raise ValueError(
            f"{name} is a PEFT adapter; the vLLM engine samples full models: merge it first "
            "(PeftModel.merge_and_unload().save_pretrained(...)), or set use_vllm: false."
        )
    kwargs = config.vllm_engine_kwargs()
    if kwargs.get("dtype") == "auto" and model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    if model_args.model_revision not in (None, "main"):
        kwargs.setdefault("revision", model_args.model_revision)
    llm = load_vllm_for_processes(name, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision)
    tokenizer.padding_side = "left"
    return llm, tokenizer


def _is_adapter(name: str, revision: str | None) -> bool:
    """Whether `name` (a folder or a Hub id) holds a PEFT adapter rather than a full model."""
    path = Path(name).expanduser()
    if path.exists():
        return (path / "adapter_config.json").exists()
    try:
        from huggingface_hub import file_exists

        return file_exists(name, "adapter_config.json", revision=revision)
    except Exception:  # offline, private, ...: from_pretrained will say what is wrong
        return False


def load_verifier(script_args: PowerScriptArguments, *datasets: Any) -> Any:
    """The verifier named by `script_args.verifier` (`trl_power.verifiers.get_verifier`; None when unset), with the
    gold answers of `datasets` in `answer_column` for `math`."""
    from trl_power.verifiers import get_verifier

    return get_verifier(script_args.verifier, script_args.answer_column, *datasets)


def finish_processes() -> None:
    """The end of a script under `accelerate launch`: wait for every process, then destroy the process group. Left to
    the interpreter's exit, a gloo group's worker threads are torn down while still joinable, and a process aborts
    now and then after its work is done ("terminate called without an active exception", exit -6), failing the
    whole launch."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
    state.destroy_process_group()


def run_script(main: Any, make_parser: Any) -> Any:
    """A script's `__main__`: the process group first (several processes without a GPU then form a gloo group on
    CPU), then `main` on the parsed command line and `--config` file, then the group destroyed (`finish_processes`)."""
    init_processes()
    result = main(*parse_args(make_parser()))
    finish_processes()
    return result


def train_and_save(trainer: Any, training_args: Any, dataset_name: str | None) -> None:
    """The end of a training script, as TRL's: train (resuming when asked), `save_model` (the adapter with
    `use_peft`), `train_results.json`, `trainer_state.json` (every logged metric), the model card (main process),
    the push with `push_to_hub`, and the trackers closed (transformers >= 5.18)."""
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(dataset_name=dataset_name)
    trainer.accelerator.print(f"Model and model card saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if hasattr(trainer, "end"):
        trainer.end()


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")
