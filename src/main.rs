//! The `ferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ferry::gguf::Gguf;
use ferry::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Inference for GGUF models larger than the GPU's memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, hyperparameters, tensors by type, bytes per layer and tokenizer.
    Inspect {
        /// Model file (.gguf; any part of a split model).
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        /// Model file whose tokenizer to use.
        #[arg(short, long)]
        model: PathBuf,
        /// Treat special tokens written in the text (e.g. <|im_start|>) as plain text.
        #[arg(long)]
        no_special: bool,
        /// Do not add the BOS/EOS tokens the model asks for.
        #[arg(long)]
        no_bos: bool,
        /// Read the text from a file instead of the command line.
        #[arg(short, long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// The text to tokenize.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json } => {
            let g = Gguf::open(&model)?;
            let s = ferry::inspect::summarize(&g);
            if json {
                println!("{}", serde_json::to_string_pretty(&s.json)?);
            } else {
                print!("{}", s.text);
            }
        }
        Command::Tokenize {
            model,
            no_special,
            no_bos,
            file,
            text,
        } => {
            let text = match file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => text.unwrap_or_default(),
            };
            let g = Gguf::open(&model)?;
            let tok = Tokenizer::from_gguf(&g).with_context(|| format!("{}", model.display()))?;
            let ids = tok.encode(&text, !no_bos, !no_special);
            println!("{}", serde_json::to_string(&ids)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
