//! `telework-agent wake …`: IT staff list, on an always-on office PC, the sleeping PCs of
//! its LAN it may wake. Changes reach the running agent within seconds (it re-reads the list).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use telework_agent::state::DataDir;
use telework_agent::wake::packet::Mac;
use telework_agent::wake::{WakeListError, WakeTarget, DEFAULT_BROADCAST, DEFAULT_PORT};
use telework_protocol::ComputerId;

#[derive(Subcommand)]
pub enum WakeCommand {
    /// Let this PC wake another PC of its LAN: the relay passes employees' wake requests for
    /// that computer ID here, and this PC sends the magic packet.
    Add {
        /// The sleeping PC's computer ID.
        id: ComputerId,
        /// The sleeping PC's network card address (AA:BB:CC:DD:EE:FF or aa-bb-cc-dd-ee-ff).
        #[arg(long)]
        mac: Mac,
        /// The office LAN's broadcast address, e.g. 192.168.1.255 [default: 255.255.255.255].
        #[arg(long, default_value_t = DEFAULT_BROADCAST)]
        broadcast: Ipv4Addr,
        /// The UDP port the magic packet goes to.
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the PCs this PC may wake.
    List {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Stop this PC from waking a PC.
    Remove {
        /// The sleeping PC's computer ID.
        id: ComputerId,
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
}

pub fn run(command: WakeCommand) -> anyhow::Result<()> {
    match command {
        WakeCommand::Add {
            id,
            mac,
            broadcast,
            port,
            data_dir,
        } => {
            let data = open(&data_dir)?;
            if data.settings().is_ok_and(|s| s.computer_id == id) {
                return Err(WakeListError::Itself(id).into());
            }
            let mut list = data.wake_list()?;
            let replaced = list.add(WakeTarget {
                id: id.clone(),
                mac,
                broadcast,
                port,
            })?;
            data.save_wake_list(&list)?;
            let verb = if replaced {
                "now wakes"
            } else {
                "can now wake"
            };
            println!("this PC {verb} {id} ({mac}, magic packet to {broadcast}:{port})");
            println!(
                "a running agent tells the relay within seconds; the MAC and address stay on this PC"
            );
            Ok(())
        }
        WakeCommand::List { data_dir } => {
            let list = open(&data_dir)?.wake_list()?;
            if list.targets.is_empty() {
                println!("this PC wakes no other PC (add one with 'telework-agent wake add')");
            }
            for t in list.targets {
                println!("{:<32} {}  {}:{}", t.id, t.mac, t.broadcast, t.port);
            }
            Ok(())
        }
        WakeCommand::Remove { id, data_dir } => {
            let data = open(&data_dir)?;
            let mut list = data.wake_list()?;
            list.remove(&id)?;
            data.save_wake_list(&list)?;
            println!("this PC no longer wakes {id}");
            Ok(())
        }
    }
}

fn open(data_dir: &Path) -> anyhow::Result<DataDir> {
    Ok(DataDir::open(data_dir)?)
}
