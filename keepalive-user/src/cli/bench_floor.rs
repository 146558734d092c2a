//! `kato bench-floor` (hidden): the empty programs that `cargo xtask bench`
//! measures kato against, from their own object.

use clap::Args;

use super::KernelArgs;

#[derive(Debug, Args)]
pub struct BenchFloorArgs {
    /// The empty sock_ops program on the cgroup hierarchy's root instead
    /// (`kato protect`'s floor).
    #[arg(long)]
    pub sock_ops: bool,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

pub async fn run(args: BenchFloorArgs) -> anyhow::Result<()> {
    let stop = super::signals::shutdown()?;
    let _floor = if args.sock_ops {
        let root = keepalive_user::protect::cgroup::root().map_err(anyhow::Error::msg)?;
        keepalive_user::bpf::floor::attach_sock_ops(&root)?
    } else {
        keepalive_user::bpf::floor::attach(&args.kernel.btf)?
    };
    eprintln!("kato bench-floor: attached");
    stop.await;
    Ok(())
}
