//! The `repeatd` command: parses the command line, loads the config, sets up
//! logging and hands over to the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use repeatd::config;
use repeatd::plugins::{self, Payload, PluginHost, PluginKind, PluginSource};
use repeatd::repeater::PayloadKind;

#[derive(Debug, Parser)]
#[command(
    name = "repeatd",
    version,
    about = "A data-forwarding gateway for CommCare-style XForm submissions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (embedded defaults when no config is given).
    Serve {
        /// The TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Copy a gateway's redb store into an empty PostgreSQL database.
    ///
    /// Stop the gateway first: the copy is of the store as it is when the
    /// migration starts, and redb refuses a store another process has open.
    /// Everything is copied (forms, cases, records with their attempts,
    /// configured objects, pending notification states) with the record ids
    /// unchanged, in one transaction: a migration that fails leaves the
    /// database empty. A database that already holds data is refused.
    ///
    /// Then point the config at the database (`[store] backend = "postgres"`,
    /// `url = ...`) and keep the same data_dir: its secret.key opens the
    /// connections' sealed secrets (unless REPEATD_SECRET_KEY is set).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to", "to_env"])))]
    Migrate {
        /// The stopped gateway's data_dir (the one holding repeatd.redb).
        #[arg(long, value_name = "DATA_DIR")]
        from: PathBuf,
        /// The database, as postgres://USER:PASSWORD@HOST:PORT/DATABASE.
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// The name of an environment variable holding the database URL, so
        /// that its password stays out of the process list.
        #[arg(long, value_name = "VAR")]
        to_env: Option<String>,
    },
    /// A tiny receiver that prints every request and answers 200.
    Sink {
        /// Where to listen, e.g. 127.0.0.1:9000.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The status to answer (e.g. 503, to watch records fail and retry).
        #[arg(long, default_value_t = 200)]
        status: u16,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a component; print its kind and name.
    Check {
        /// A component file, or the name of a built-in (e.g. case-json).
        file: PathBuf,
    },
    /// Run a payload plugin on one sample event and print the request it would send.
    Run {
        /// A component file, or the name of a built-in (e.g. case-json).
        file: PathBuf,
        /// A form (XML, as a device submits it), an app event
        /// (`{"app_id": .., "event": "saved"|"built", "build_id": ..}`) or a
        /// case (the case-json shape).
        #[arg(long)]
        event: PathBuf,
        /// The repeater kind: form, case, form-stub or app-schema (default:
        /// the first kind the plugin serves).
        #[arg(long)]
        kind: Option<String>,
        /// The project space the event belongs to.
        #[arg(long, default_value = "demo")]
        domain: String,
        /// The connection URL to show.
        #[arg(long, default_value = "http://remote.example/receiver")]
        url: String,
        /// The app a form was submitted for (as `POST /a/{domain}/receiver/{app_id}`).
        #[arg(long)]
        app_id: Option<String>,
        /// A repeater setting handed to the plugin, NAME=VALUE (repeatable).
        #[arg(long = "setting", value_name = "NAME=VALUE")]
        settings: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Migrate { from, to, to_env } => migrate(&from, to, to_env.as_deref()),
        Command::Sink { listen, status } => {
            runtime().and_then(|rt| rt.block_on(repeatd::sink::run(listen, status)))
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => plugin_check(&file),
        Command::Plugin {
            command:
                PluginCommand::Run {
                    file,
                    event,
                    kind,
                    domain,
                    url,
                    app_id,
                    settings,
                },
        } => plugin_run(
            &file,
            &event,
            kind.as_deref(),
            &domain,
            &url,
            app_id.as_deref(),
            &settings,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("repeatd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = config::load(config_path)?;
    let runtime = runtime()?;
    runtime.block_on(async move {
        let listen = config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| anyhow::anyhow!("listen: cannot listen on {listen}: {error}"))?;
        let data_dir = config.data_dir.clone();
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (state, token_source) = repeatd::start(config).await?;
        match &token_source {
            repeatd::AdminTokenSource::Configured => {
                eprintln!(
                    "repeatd: admin token from the config (admin_token or REPEATD_ADMIN_TOKEN)"
                )
            }
            repeatd::AdminTokenSource::File(path) => {
                eprintln!("repeatd: admin token is in {}", path.display())
            }
        }
        eprintln!(
            "repeatd: listening on {scheme}://{} (data in {})",
            listener.local_addr()?,
            data_dir.display()
        );
        eprintln!(
            "repeatd: console at http://{}/console/ (sign in with the admin token)",
            listener.local_addr()?
        );
        repeatd::serve(state, listener, shutdown_signal()).await
    })
}

/// `repeatd migrate`: copies the store and prints how much of each kind.
fn migrate(from: &Path, to: Option<String>, to_env: Option<&str>) -> anyhow::Result<()> {
    let url = match (to, to_env) {
        (Some(url), _) => url,
        (None, Some(name)) => std::env::var(name).map_err(|error| {
            anyhow::anyhow!("--to-env {name}: the environment variable is not usable: {error}")
        })?,
        (None, None) => anyhow::bail!("migrate: give --to URL or --to-env VAR"),
    };
    let counts = runtime()?.block_on(repeatd::store::postgres::import::migrate(from, &url))?;
    println!(
        "repeatd: copied the store of {} into PostgreSQL",
        from.display()
    );
    for (kind, n) in [
        ("forms", counts.forms),
        ("cases", counts.cases),
        ("records", counts.records),
        ("attempts", counts.attempts),
        ("objects", counts.objects),
        ("notifications", counts.notifications),
    ] {
        println!("{kind}: {n}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    eprintln!("repeatd: shutting down; letting sends under way finish");
}

/// Loads a component file; a name of a built-in that is not a file (e.g.
/// `case-json`) loads the embedded built-in.
fn load_plugin_file(
    file: &Path,
) -> anyhow::Result<(std::sync::Arc<PluginHost>, plugins::LoadedPlugin)> {
    let builtin = (!file.exists())
        .then(|| file.to_str().and_then(plugins::builtin_component))
        .flatten();
    let bytes = match builtin {
        Some(bytes) => bytes.to_vec(),
        None => {
            std::fs::read(file).map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?
        }
    };
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_owned();
    let host = PluginHost::without_builtins(plugins::PluginLimits::default())?;
    let loaded = host
        .load(&name, &bytes, PluginSource::File(file.to_owned()))
        .map_err(|error| anyhow::anyhow!("{}: {error:#}", file.display()))?;
    Ok((host, loaded))
}

fn plugin_check(file: &Path) -> anyhow::Result<()> {
    let (_, loaded) = load_plugin_file(file)?;
    match &loaded.kind {
        PluginKind::Format { description, kinds } => {
            let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
            println!(
                "{}: payload format \"{}\" ({description}); serves {}",
                file.display(),
                loaded.name,
                kinds.join(", ")
            );
        }
        PluginKind::Auth { description } => {
            println!(
                "{}: auth plugin \"{}\" ({description})",
                file.display(),
                loaded.name
            );
        }
    }
    Ok(())
}

fn plugin_run(
    file: &Path,
    event_file: &Path,
    kind: Option<&str>,
    domain: &str,
    url: &str,
    app_id: Option<&str>,
    settings: &[String],
) -> anyhow::Result<()> {
    let (host, loaded) = load_plugin_file(file)?;
    let PluginKind::Format { kinds, .. } = &loaded.kind else {
        anyhow::bail!(
            "{}: is an auth plugin; `plugin run` runs payload formats",
            file.display()
        );
    };
    let kind: PayloadKind = match kind {
        Some(text) => text
            .parse()
            .map_err(|problem| anyhow::anyhow!("--kind: {problem}"))?,
        None => *kinds.first().ok_or_else(|| {
            anyhow::anyhow!("{}: the plugin serves no kind; pass --kind", file.display())
        })?,
    };
    let bytes = std::fs::read(event_file)
        .map_err(|error| anyhow::anyhow!("{}: {error}", event_file.display()))?;
    let mut events = repeatd::sample::events(&bytes, kind, domain)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", event_file.display()))?;
    if let Some(app_id) = app_id {
        for event in &mut events {
            if let plugins::Event::Form(form) = event {
                form.app_id = Some(app_id.to_owned());
            }
        }
    }
    let settings = settings
        .iter()
        .map(|setting| {
            setting
                .split_once('=')
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--setting {setting:?}: want NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<(&str, &str)>>>()?;
    let settings = plugins::pairs(settings);
    for (index, event) in events.iter().enumerate() {
        let form_object = match loaded.wants_form_object() {
            true => repeatd::sample::form_object(&bytes, event)
                .map_err(|problem| anyhow::anyhow!("{}: {problem}", event_file.display()))?,
            false => None,
        };
        let payload = host.build_payload(&loaded, kind, event, form_object, &settings)?;
        if index > 0 {
            println!();
        }
        match payload {
            Payload::Nothing => println!("(nothing to send: the record would be `empty`)"),
            Payload::Send(request) => {
                let mut full_url =
                    url::Url::parse(url).map_err(|error| anyhow::anyhow!("--url: {error}"))?;
                if !request.query.is_empty() {
                    let mut query = full_url.query_pairs_mut();
                    for pair in &request.query {
                        query.append_pair(&pair.name, &pair.value);
                    }
                }
                println!("POST {full_url}");
                println!("Content-Type: {}", request.content_type);
                for pair in &request.headers {
                    println!("{}: {}", pair.name, pair.value);
                }
                println!("Idempotency-Key: <the repeat record's id>");
                println!();
                let body = repeatd::xform::body_text(&request.content_type, &request.body);
                println!("{body}");
            }
        }
    }
    Ok(())
}
