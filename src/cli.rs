//! The command line: `hearth serve`, config helpers and admin commands. Parses arguments (clap),
//! loads the configuration, sets up logging and runs the chosen command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    admin,
    config::{self, Config, LogFormat, Overrides},
    server,
};

/// Hearth, a Matrix homeserver with embedded storage.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (overrides `listen`), e.g. 127.0.0.1:8008.
        #[arg(long)]
        listen: Option<String>,
        /// Server name (overrides `server_name`).
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Write a commented configuration file and a fresh signing key.
    GenerateConfig {
        /// The server name for user ids (@alice:NAME).
        #[arg(long)]
        server_name: String,
        /// Where to write the configuration (default: standard output). The signing key is
        /// written next to it as NAME.signing.key.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a configuration file and report the first problem.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Manage user accounts (works on the data directory; stop the server first).
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        common: Common,
    },
    /// Manage registration tokens (works on the data directory; stop the server first).
    RegistrationToken {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        common: Common,
    },
    /// List the abuse reports users sent (works on the data directory; stop the server first).
    Reports {
        #[command(flatten)]
        common: Common,
    },
    /// The server's signing key (works on the data directory; stop the server first).
    SigningKey {
        #[command(subcommand)]
        action: SigningKeyAction,
        #[command(flatten)]
        common: Common,
    },
    /// The application services (bridges, bots) of `[appservices] registration_files`.
    Appservice {
        #[command(subcommand)]
        action: AppserviceAction,
        #[command(flatten)]
        common: Common,
    },
    /// Media repository housekeeping (works on the data directory; stop the server first).
    Media {
        #[command(subcommand)]
        action: MediaAction,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Subcommand)]
enum SigningKeyAction {
    /// Retire the current key and create a new one. Other servers keep checking old signatures
    /// with the retired key, which `/_matrix/key/v2/server` lists under `old_verify_keys`.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum AppserviceAction {
    /// List the configured services: id, URL, sender and namespaces.
    List,
    /// Check one registration file (YAML) and report the first problem.
    Check {
        /// The registration file.
        file: PathBuf,
        /// The server name its user ids are checked against (default: the configuration's).
        #[arg(long)]
        server_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum MediaAction {
    /// Report the media store's size: media, distinct contents after deduplication, thumbnails.
    Stats,
    /// Delete media (and content no other media uses) unused for N days or uploaded by a user.
    Purge {
        /// Media neither uploaded nor downloaded during the last N days.
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        older_than_days: Option<u64>,
        /// Media uploaded by this user (full user id).
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Configuration file (default: built-in defaults plus HEARTH_* environment variables).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides `database.path`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

/// How an admin command gets a password.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Read the password from the first line of this file.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Generate a random password and print it.
    #[arg(long)]
    pub random_password: bool,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Create an account (the password is read from standard input unless a flag says otherwise).
    Create {
        /// Username (localpart) or full user id.
        name: String,
        /// Make the user a server admin.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Set a new password and log the user out everywhere.
    ResetPassword {
        /// Username (localpart) or full user id.
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Deactivate an account: it can no longer log in and its sessions end.
    Deactivate {
        /// Username (localpart) or full user id.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a registration token.
    Create {
        /// The token (default: 16 random characters).
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (default: unlimited).
        #[arg(long)]
        uses: Option<u32>,
        /// Lifetime such as 30m, 12h, 7d (default: no expiry).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List registration tokens.
    List,
    /// Delete a registration token.
    Delete {
        /// The token.
        token: String,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    crate::util::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hearth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(common: &Common, overrides: Overrides) -> Result<Config, String> {
    let overrides = Overrides {
        data_dir: common.data_dir.clone(),
        ..overrides
    };
    config::load(common.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            common,
            listen,
            server_name,
        } => {
            let config = load(
                &common,
                Overrides {
                    listen,
                    server_name,
                    data_dir: None,
                },
            )?;
            init_logging(&config);
            actix_web::rt::System::new()
                .block_on(server::run(config))
                .map_err(|e| e.to_string())
        }
        Command::GenerateConfig { server_name, out } => admin::generate_config(&server_name, out.as_deref()),
        Command::CheckConfig { file } => {
            let config =
                config::load(Some(&file), std::env::vars(), &Overrides::default()).map_err(|e| e.to_string())?;
            // The application service registrations are checked as the server checks them.
            crate::services::appservice::Appservices::load(&config.appservice_registration_files, &config.server_name)?;
            println!(
                "{} is valid: server_name = {}, listen = {:?}, database.path = {}, registration = {:?}",
                file.display(),
                config.server_name,
                config.listen,
                config.database_path.display(),
                config.registration
            );
            Ok(())
        }
        Command::User { action, common } => {
            let config = load(&common, Overrides::default())?;
            init_logging_quiet();
            admin::block_on(async move {
                let services = admin::open(config)?;
                match action {
                    UserAction::Create {
                        name,
                        admin: is_admin,
                        password,
                    } => admin::create_user(&services, &name, is_admin, &password).await,
                    UserAction::ResetPassword { name, password } => {
                        admin::reset_password(&services, &name, &password).await
                    }
                    UserAction::Deactivate { name } => admin::deactivate_user(&services, &name).await,
                }
            })
        }
        Command::RegistrationToken { action, common } => {
            let config = load(&common, Overrides::default())?;
            init_logging_quiet();
            admin::block_on(async move {
                let services = admin::open(config)?;
                match action {
                    TokenAction::Create {
                        token,
                        uses,
                        expires_in,
                    } => admin::create_token(&services, token, uses, expires_in.as_deref()).await,
                    TokenAction::List => admin::list_tokens(&services),
                    TokenAction::Delete { token } => admin::delete_token(&services, &token).await,
                }
            })
        }
        Command::SigningKey {
            action: SigningKeyAction::Rotate,
            common,
        } => {
            let config = load(&common, Overrides::default())?;
            init_logging_quiet();
            let key_path = config.signing_key_path.clone();
            let services = admin::open(config)?;
            let (old, new) = services
                .federation
                .own_keys
                .rotate(&key_path)
                .map_err(|e| e.to_string())?;
            println!("retired {old}; now signing with {new} ({})", key_path.display());
            Ok(())
        }
        Command::Reports { common } => {
            let config = load(&common, Overrides::default())?;
            init_logging_quiet();
            admin::list_reports(&*admin::open(config)?)
        }
        Command::Appservice {
            action: AppserviceAction::List,
            common,
        } => admin::list_appservices(&load(&common, Overrides::default())?),
        Command::Appservice {
            action: AppserviceAction::Check { file, server_name },
            common,
        } => {
            let server_name = match server_name {
                Some(name) => name,
                None => load(&common, Overrides::default())?.server_name.to_string(),
            };
            admin::check_appservice(&file, &server_name)
        }
        Command::Media { action, common } => {
            let config = load(&common, Overrides::default())?;
            init_logging_quiet();
            admin::block_on(async move {
                let services = admin::open(config)?;
                match action {
                    MediaAction::Stats => admin::media_stats(&services),
                    MediaAction::Purge { older_than_days, user } => {
                        admin::media_purge(&services, older_than_days, user).await
                    }
                }
            })
        }
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn init_logging_quiet() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
}
