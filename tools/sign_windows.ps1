# Authenticode-signs one file for `tauri build` on Windows (tauri.conf.json bundle.windows.signCommand
# passes the path of every binary and installer it makes as the only argument).
#
# The company's certificate, from the environment:
#   LIKENESS_SIGN_CERT_THUMBPRINT   a certificate in the machine or user store (or a hardware token / HSM), or
#   LIKENESS_SIGN_PFX + LIKENESS_SIGN_PFX_PASSWORD   a .pfx file
#   LIKENESS_SIGN_TIMESTAMP_URL     an RFC 3161 timestamp server (optional; build time only, never at run time)
#   LIKENESS_SIGNTOOL               signtool.exe (default: signtool on PATH)
# With none of the certificate variables set the file is left unsigned (a development build).
param([Parameter(Mandatory = $true)][string]$File)
$ErrorActionPreference = 'Stop'
$signtool = if ($env:LIKENESS_SIGNTOOL) { $env:LIKENESS_SIGNTOOL } else { 'signtool' }
$args = @('sign', '/fd', 'sha256')
if ($env:LIKENESS_SIGN_CERT_THUMBPRINT) {
    $args += @('/sha1', $env:LIKENESS_SIGN_CERT_THUMBPRINT)
} elseif ($env:LIKENESS_SIGN_PFX) {
    $args += @('/f', $env:LIKENESS_SIGN_PFX, '/p', $env:LIKENESS_SIGN_PFX_PASSWORD)
} else {
    Write-Warning "sign_windows: no certificate configured (LIKENESS_SIGN_CERT_THUMBPRINT or LIKENESS_SIGN_PFX); $File is not signed"
    exit 0
}
if ($env:LIKENESS_SIGN_TIMESTAMP_URL) { $args += @('/tr', $env:LIKENESS_SIGN_TIMESTAMP_URL, '/td', 'sha256') }
& $signtool @args $File
if ($LASTEXITCODE -ne 0) { throw "signtool failed ($LASTEXITCODE) on $File" }
& $signtool verify /pa $File
if ($LASTEXITCODE -ne 0) { throw "the signature of $File does not verify" }
