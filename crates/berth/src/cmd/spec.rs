//! `berth init` and `berth validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_core::{AppSpec, SpecDoc};

use super::{Ctx, default_spec_path};
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the spec.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    group: String,
    #[arg(long, default_value = "web")]
    name: String,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

pub fn init(args: InitArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(default_spec_path);
    if path.exists() && !args.force {
        anyhow::bail!("{} already exists; use --force to overwrite it", path.display());
    }
    let text = berth_core::spec::starter(&args.group, &args.name);
    // The starter must itself be valid, whatever names were given.
    AppSpec::from_yaml(&text, Some(&path.display().to_string())).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    match ctx.format {
        Format::Json => {
            let out = serde_json::json!({"file": path, "group": args.group, "name": args.name});
            println!("{}", output::json(&out)?);
        }
        Format::Table => println!("wrote {}; edit it, then `berth validate` and `berth deploy`", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The spec to check.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

/// Reads and validates a spec file; errors name the file, line, column and key.
pub fn load(path: &std::path::Path) -> anyhow::Result<Result<AppSpec, berth_core::SpecErrors>> {
    Ok(load_doc(path)?.and_then(|doc| match doc {
        SpecDoc::App(spec) => Ok(*spec),
        SpecDoc::Job(spec) => Err(berth_core::SpecErrors(vec![berth_core::SpecError {
            file: Some(path.display().to_string()),
            line: None,
            column: None,
            field: "kind".into(),
            message: format!("{} is a job (kind: job): `berth deploy` runs it, `berth job` manages it", spec.id()),
            suggestion: None,
        }])),
    }))
}

/// Reads and validates a spec file of either kind (`kind: job`, else an app).
pub fn load_doc(path: &std::path::Path) -> anyhow::Result<Result<SpecDoc, berth_core::SpecErrors>> {
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: write a starter spec with `berth init` (or name yours with -f FILE)",
            path.display()
        );
    }
    let text = super::read_capped(path, super::MAX_SPEC_BYTES, "a spec")?;
    Ok(SpecDoc::from_yaml(&text, Some(&path.display().to_string())))
}

pub fn validate(args: ValidateArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(default_spec_path);
    match load_doc(&path)? {
        Ok(SpecDoc::Job(spec)) => {
            if ctx.format == Format::Json {
                println!(
                    "{}",
                    output::json(&serde_json::json!({"valid": true, "file": path, "kind": "job", "spec": spec}))?
                );
            } else {
                let when = spec.schedule.clone().unwrap_or_else(|| format!("after {}", spec.parents().join(" and ")));
                println!("{}: valid (job {}, {when})", path.display(), spec.id());
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(SpecDoc::App(spec)) => {
            if ctx.format == Format::Json {
                let out = serde_json::json!({"valid": true, "file": path, "spec": spec, "warnings": spec.warnings()});
                println!("{}", output::json(&out)?);
            } else {
                for w in spec.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("{}: valid ({}, {} instance(s))", path.display(), spec.id(), spec.instances);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            if ctx.format == Format::Json {
                println!("{}", output::json(&serde_json::json!({"valid": false, "file": path, "errors": errors.0}))?);
            } else {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
