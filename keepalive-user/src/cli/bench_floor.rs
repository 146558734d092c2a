//! `kato bench-floor` (hidden): the empty programs that `cargo xtask bench`
//! measures kato against.

use keepalive_user::loader::Probes;

use super::KernelArgs;

pub async fn run(args: KernelArgs) -> anyhow::Result<()> {
    let stop = super::signals::shutdown()?;
    let mut probes = Probes::open(&args.load_options(false))?;
    probes.attach_floor()?;
    eprintln!("kato bench-floor: attached");
    stop.await;
    Ok(())
}
