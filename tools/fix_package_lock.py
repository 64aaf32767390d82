"""Adds lock entries for other platforms' optional packages that `npm install` left out.

Why: when the npm registry a machine uses lags behind for some platform packages (for example
@tauri-apps/cli-darwin-arm64 at the version the CLI pins), `npm install` writes no lock entry for
them, and `npm ci` then refuses the lock as out of sync. An entry with the exact version and the
package's os / cpu (/ libc) lets `npm ci` see the lock as complete while skipping the package on
platforms it is not for. Run after changing package.json:  python3 tools/fix_package_lock.py package-lock.json
"""
import json, re, sys
p = sys.argv[1]
lock = json.load(open(p))
pk = lock["packages"]
added = 0
def platform(name):
    base = name.split("/")[-1]
    os_ = next((o for o in ["darwin","linux","win32","android","freebsd","openbsd","openharmony","sunos","aix","netbsd"] if o in base), None)
    cpu = next((c for c in ["arm64","x64","ia32","riscv64","s390x","ppc64","loong64","arm"] if re.search(r"(^|-)" + c + r"($|-)", base.replace("gnueabihf","").replace("musleabihf",""))), None)
    if cpu is None and "-arm-" in base: cpu = "arm"
    libc = "musl" if "musl" in base else ("glibc" if base.endswith("gnu") or "-gnu" in base or "gnueabihf" in base else None)
    return os_, cpu, libc
for path, meta in list(pk.items()):
    for dep, spec in (meta.get("optionalDependencies") or {}).items():
        key = "node_modules/" + dep
        if key in pk or (path and (path + "/node_modules/" + dep) in pk):
            continue
        os_, cpu, libc = platform(dep)
        if os_ is None or cpu is None or not re.fullmatch(r"\d+\.\d+\.\d+", spec):
            print("cannot place", dep, spec, file=sys.stderr); continue
        e = {"version": spec, "dev": True, "optional": True, "os": [os_], "cpu": [cpu]}
        if libc and os_ == "linux": e["libc"] = [libc]
        pk[key] = e
        added += 1
json.dump(lock, open(p, "w"), indent=2)
open(p, "a").write("\n")
print("added", added)
