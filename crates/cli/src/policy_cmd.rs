//! `likeness policy show`: the machine policy in effect, what it manages and from where.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use likeness_core::policy::{Managed, Policy, PolicyStatus};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Show every setting the machine policy manages, its value and its source.
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub fn policy(cmd: PolicyCmd) -> Result<ExitCode> {
    let PolicyCmd::Show { json } = cmd;
    let policy = Policy::machine();
    if json {
        println!("{}", serde_json::to_string_pretty(&*policy)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &policy.status {
        PolicyStatus::NotFound => println!("machine policy: none at {} (nothing is managed)", policy.location),
        PolicyStatus::Applied => println!("machine policy: {} (applied)", policy.location),
        PolicyStatus::Refused { reason } => {
            println!("machine policy: {} REFUSED ({reason}); safe defaults apply", policy.location)
        }
    }
    let opt = |v: &Option<std::path::PathBuf>| v.as_ref().map_or("(default)".to_owned(), |p| p.display().to_string());
    line("retention_days", &policy.retention_days, policy.retention_days.value.to_string());
    line("retention_min_days", &policy.retention_min_days, policy.retention_min_days.value.to_string());
    line("retention_max_days", &policy.retention_max_days, policy.retention_max_days.value.to_string());
    line("models_dir", &policy.models_dir, opt(&policy.models_dir.value));
    line("data_dir", &policy.data_dir, opt(&policy.data_dir.value));
    line("allowed_looks", &policy.allowed_looks, policy.allowed_looks.value.join(", "));
    line("allowed_export_formats", &policy.allowed_export_formats, policy.allowed_export_formats.value.join(", "));
    line("allow_model_import", &policy.allow_model_import, policy.allow_model_import.value.to_string());
    Ok(ExitCode::SUCCESS)
}

fn line<T>(name: &str, m: &Managed<T>, value: String) {
    let whence = match (&m.managed, &m.source) {
        (true, Some(source)) => format!("managed by {source}"),
        _ => "user / default".to_owned(),
    };
    println!("  {name:<24} {value:<28} {whence}");
}
