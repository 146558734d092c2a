//! `kato bench-floor` (hidden): the empty programs that `cargo xtask bench`
//! measures kato against, from their own object.

use super::KernelArgs;

pub async fn run(args: KernelArgs) -> anyhow::Result<()> {
    let stop = super::signals::shutdown()?;
    let _floor = keepalive_user::bpf::floor::attach(&args.btf)?;
    eprintln!("kato bench-floor: attached");
    stop.await;
    Ok(())
}
