<#
.SYNOPSIS
Registers this Windows server with AWS Systems Manager using a hybrid activation
vended by the activation-vending service.

.DESCRIPTION
Fetches an activation (ID, code, region) from the activation-vending service with
Invoke-RestMethod, retrying with exponential backoff and jitter and honouring
Retry-After on 503/429, for at most -MaxWait seconds; a 4xx answer is final. If the SSM
Agent is installed it registers it directly; otherwise it downloads ssm-setup-cli.exe
from the regional AWS download location, checks its Authenticode signature, and lets
it install the SSM Agent and register this server; the regional agent installer
(AmazonSSMAgentSetup.exe, also signature-checked) is the fallback. With -Proxy the
agent service gets the proxy in its registry Environment value, as AWS documents.
Finally sets the AmazonSSMAgent service to start automatically, starts it and waits
(-OnlineWait) until the agent reports itself registered and connected.

Each vend request carries "X-Machine-Id: <SHA-256 of Win32_ComputerSystemProduct.UUID,
else of the MachineGuid registry value>" (never the raw value). The digest is kept
beside the agent's registration (InstanceData\activation-vending.machine).

Once registered it reports the registration to the service (POST /registrations: the
managed instance ID, the activation ID, the instance name), which names and tags the
node ("confirmed: mi-..."). When SSM refuses the code (InvalidActivation,
ActivationExpired, RegistrationLimitExceeded) it reports the refusal and asks for an
activation once more. A report that fails is a WARNING, never a different exit code.

Idempotent: a server that is already registered exits 0 without fetching a code
unless -Force is given, or unless it is not the machine it was registered on (a clone
of a registered image, a re-image): then the old registration is cleared and the
server registers afresh. -PrepareImage readies a machine for capture.

Everything the script prints also goes to %ProgramData%\ActivationVending\bootstrap.log
(not to a transcript), and the code never does.

The activation code is never written to the console, a stream, the transcript or a
file: it is passed to the AWS tool through System.Diagnostics.Process (not a cmdlet,
so module logging does not record it), and the tool's output is masked. Like the
Linux script, the code is visible in the tool's command line while it runs, because
ssm-setup-cli and the agent accept it only as an argument.

Works in Windows PowerShell 5.1 and PowerShell 7. This script was checked by parsing
(tree-sitter-powershell) and review only: PowerShell cannot run where it was written.

Every parameter has an environment variable twin (VENDING_URL, VENDING_POOL,
VENDING_INSTANCE, VENDING_REGION, VENDING_API_ID, VENDING_CA_BUNDLE, VENDING_MAX_WAIT,
VENDING_PROXY, VENDING_NO_PROXY, VENDING_ONLINE_WAIT, VENDING_FORCE=1, VENDING_DRY_RUN=1,
VENDING_ALLOW_UNVERIFIED=1, VENDING_PREPARE_IMAGE=1); a parameter given on the command
line wins.

.PARAMETER Url
Base URL of the activation-vending service (required): https://, or http:// to a
loopback address for local tests. With a VPC endpoint's own DNS name
(https://vpce-....execute-api.REGION.vpce.amazonaws.com/STAGE) also pass -ApiId.

.PARAMETER Pool
Activation pool to draw from (default: the service's "default" pool): 1-64 of
A-Z a-z 0-9 _ -. A pool that does not exist, is disabled, refuses this server's
address or is misconfigured is exit 3 at once, not retried.

.PARAMETER Instance
The name the vending service knows this server by, so that a retry gets the same
activation back instead of a new slot (default: the computer name). It is not the
server's name in SSM. A host name: dot-separated labels of A-Z a-z 0-9 _ -, 1-63 each,
not starting or ending with -, 253 characters in all.

.PARAMETER Region
Overrides the region the service returns.

.PARAMETER ApiId
Sends the header "x-apigw-api-id: <ApiId>", needed when -Url is the VPC endpoint's
own DNS name rather than the API's private DNS name.

.PARAMETER CaBundle
PEM or DER file with the CA certificate(s) that issued the service's certificate, for
a CA not in the machine's trust store. Windows PowerShell 5.1 only; with PowerShell 7
put the CA into Cert:\LocalMachine\Root instead.

.PARAMETER MaxWait
Gives up a network step (the fetch, each download) after this many seconds
(default 120).

.PARAMETER Proxy
HTTP(S) proxy for the fetch, the downloads and the agent (default: the https_proxy or
HTTPS_PROXY environment variable). Loopback addresses are never proxied. The agent
service gets https_proxy, http_proxy and no_proxy=169.254.169.254,<NoProxy> in
HKLM:\SYSTEM\CurrentControlSet\Services\AmazonSSMAgent, value Environment.

.PARAMETER NoProxy
Comma-separated hosts or domains not to proxy (default: no_proxy / NO_PROXY).

.PARAMETER OnlineWait
After starting the agent, waits this many seconds for it to report itself registered
and connected (the core agent's "Credentials ready" in amazon-ssm-agent.log since this
start) before failing with exit 5 (default 90).

.PARAMETER AllowUnverified
Runs ssm-setup-cli.exe or the agent installer even when its Authenticode signature
cannot be checked (status UnknownError). A signature that is missing, whose signer's CN
is not exactly "Amazon.com Services LLC", or that does not match is never accepted.

.PARAMETER PrepareImage
Readies this machine to be captured as an image: stops the agent and clears its
registration, so that every clone registers as itself. Needs no -Url.

.PARAMETER Force
Re-registers a server that is already registered.

.PARAMETER DryRun
Fetches an activation to prove connectivity, prints every step it would take with the
code masked, and changes nothing. (-WhatIf also changes nothing, and does not fetch.)

.EXAMPLE
.\bootstrap-windows.ps1 -Url https://abc123.execute-api.eu-west-1.amazonaws.com/prod

.EXAMPLE
.\bootstrap-windows.ps1 -Url https://vpce-0a1b2c3d-xyz.execute-api.eu-west-1.vpce.amazonaws.com/prod -ApiId abc123 -Pool web

.EXAMPLE
powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\bootstrap\bootstrap-windows.ps1 -Url https://... -DryRun

.EXAMPLE
.\bootstrap-windows.ps1 -Url https://... -Proxy http://proxy.example.internal:3128 -NoProxy .corp.example

.NOTES
Exit codes (the same as bootstrap-linux.sh):
  0  registered and online (or already registered and -Force not given; or dry run or
     -PrepareImage done)
  1  unexpected internal error
  2  usage error (missing -Url, invalid value)
  3  fetch failed (service unreachable, gave up after -MaxWait, HTTP error such as 400
     for a name or pool the service refuses, malformed response); not retried and
     named with the pool: 404 PoolNotFound, 403 PoolDisabled or Forbidden (this
     server's address is not in the pool's allowed_cidrs), 500 PoolMisconfigured
  4  install failed (download, signature check, agent installer); the installer's 3010
     (installed, restart needed) is success with a warning
  5  registration failed: SSM refused the activation ("refused: <Code>" on the output,
     e.g. refused: InvalidActivation), -register did not finish within 60 s, the agent's
     own identity and its registration file do not agree afterwards, or it was not seen
     getting credentials within -OnlineWait. A failed registration leaves the machine
     UNREGISTERED (the agent clears its identity before asking SSM): the stale
     registration file is removed and the next run registers afresh.
  6  unsupported platform (Windows on ARM64 has no SSM Agent build; other
     architectures) or not run as Administrator
The SSM Agent and ssm-setup-cli write the proxy variables' values, credentials included,
to their own logs; this script masks them in what it prints.
PowerShell cannot run where this project is tested: the script is checked by parsing
and review rules only (tests/bootstrap/ps_check.py).
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter()]
    [ValidatePattern('^https?://[^\s?#]+\z')]
    [string]$Url,

    [Parameter()]
    [ValidatePattern('^[A-Za-z0-9_-]{1,64}\z')]
    [string]$Pool,

    [Parameter()]
    [ValidatePattern('^(?=.{1,253}\z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\z')]
    [string]$Instance,

    [Parameter()]
    [ValidatePattern('^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\z')]
    [string]$Region,

    [Parameter()]
    [ValidatePattern('^[a-z0-9]{1,32}\z')]
    [string]$ApiId,

    [Parameter()]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string]$CaBundle,

    [Parameter()]
    [ValidateRange(1, 86400)]
    [int]$MaxWait = 120,

    [Parameter()]
    [ValidatePattern('^https?://[^\s"''\\]+\z')]
    [string]$Proxy,

    [Parameter()]
    [ValidatePattern('^[A-Za-z0-9.,:_*/\[\]-]+\z')]
    [string]$NoProxy,

    [Parameter()]
    [ValidateRange(0, 3600)]
    [int]$OnlineWait = 90,

    [Parameter()]
    [switch]$AllowUnverified,

    [Parameter()]
    [switch]$PrepareImage,

    [Parameter()]
    [switch]$Force,

    [Parameter()]
    [switch]$DryRun
)

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
Set-StrictMode -Version 2.0

$script:ExitOk = 0
$script:ExitUsage = 2
$script:ExitFetch = 3
$script:ExitInstall = 4
$script:ExitRegister = 5
$script:ExitPlatform = 6
$script:Mask = '********'
$script:ServiceName = 'AmazonSSMAgent'
$script:RegistrationFile = Join-Path $env:ProgramData 'Amazon\SSM\InstanceData\registration'
$script:IdentityFile = Join-Path $env:ProgramData 'Amazon\SSM\InstanceData\activation-vending.machine'
# The core agent logs here; its worker (ssm-agent-worker.exe) writes a log of its own on
# Windows, where "Entering SSM Agent hibernate" appears.
$script:AgentLog = Join-Path $env:ProgramData 'Amazon\SSM\Logs\amazon-ssm-agent.log'
$script:WorkerLog = Join-Path $env:ProgramData 'Amazon\SSM\Logs\ssm-agent-worker.log'
# The agent's own identity (its truth): the vault, read through ssm-cli.exe when present.
$script:VaultIdentity = Join-Path $env:ProgramData 'Amazon\SSM\InstanceData\Vault\Store\RegistrationKey'
$script:ServiceKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\AmazonSSMAgent'
# The agent is 64-bit: a 32-bit PowerShell sees the 32-bit folder in ProgramFiles.
$script:ProgramFilesDirectory = if ($env:ProgramW6432) { $env:ProgramW6432 } else { $env:ProgramFiles }
$script:AgentExe = Join-Path $script:ProgramFilesDirectory 'Amazon\SSM\amazon-ssm-agent.exe'
$script:SsmCliExe = Join-Path $script:ProgramFilesDirectory 'Amazon\SSM\ssm-cli.exe'
# `amazon-ssm-agent -register` retries a network error and waits on an endpoint that never answers; ssm-setup-cli gives it 60 s.
$script:RegisterTimeoutSeconds = 60
# Who signs the agent and ssm-setup-cli: the signer certificate's CN, exactly.
$script:AgentSignerName = 'Amazon.com Services LLC'
# The last output Invoke-MaskedProcess relayed (masked), to read a refusal's code from.
$script:LastOutput = ''
# Our own log, never a transcript: it holds what the console shows, with the code masked.
$script:LogFile = Join-Path $env:ProgramData 'ActivationVending\bootstrap.log'
$script:LogToFile = $false
# The instance metadata address never goes through a proxy (AWS's proxy guidance for the agent).
$script:ImdsNoProxy = '169.254.169.254'
$script:InstancePattern = '^(?=.{1,253}\z)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\z'
$script:PoolPattern = '^[A-Za-z0-9_-]{1,64}\z'
$script:ActivationIdPattern = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\z'
$script:ProxyPattern = '^https?://[^\s"''\\]+\z'
$script:NoProxyPattern = '^[A-Za-z0-9.,:_*/\[\]-]+\z'
$script:MachineId = ''
# Reports to the service (POST /registrations): warnings only, within this many seconds.
$script:ReportWaitSeconds = 6
# SSM's refusals the service can heal by retiring the activation: reported, then one more vend.
$script:HealableRefusals = @('InvalidActivation', 'ActivationExpired', 'RegistrationLimitExceeded')
$script:RefusalRetry = $true
$script:Refused = ''
$script:ProxyUrl = ''
$script:NoProxyList = ''
$script:AllowUnverifiedRun = $false
# The secret; only ever used through Invoke-MaskedProcess and cleared after use.
$script:ActivationCode = $null
$script:WorkDir = $null

# ------------------------------------------------------------------ output

function Write-BootstrapLog {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Message
    )
    $stamp = [DateTime]::UtcNow.ToString('yyyy-MM-ddTHH:mm:ssZ')
    $line = '{0} bootstrap-windows: {1}' -f $stamp, (ConvertTo-MaskedText -Text $Message)
    Write-Information -MessageData $line -InformationAction Continue
    Add-BootstrapLogLine -Line $line
}

function Add-BootstrapLogLine {
    # Appends to %ProgramData%\ActivationVending\bootstrap.log once Initialize-BootstrapLog
    # enabled it. Callers pass masked text only.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [AllowEmptyString()]
        [string]$Line
    )
    if (-not $script:LogToFile) {
        return
    }
    try {
        [IO.File]::AppendAllText($script:LogFile, $Line + [Environment]::NewLine)
    } catch {
        $script:LogToFile = $false
        Write-Information -MessageData ('warning: cannot write {0}: {1}' -f $script:LogFile, $_.Exception.Message) -InformationAction Continue
    }
}

function Initialize-BootstrapLog {
    [CmdletBinding(SupportsShouldProcess)]
    param()
    if (-not $PSCmdlet.ShouldProcess($script:LogFile, 'Append this run to the log')) {
        return
    }
    try {
        $null = New-Item -ItemType Directory -Path (Split-Path -Parent $script:LogFile) -Force
        $script:LogToFile = $true
    } catch {
        Write-Information -MessageData ('warning: cannot create {0}: {1}' -f $script:LogFile, $_.Exception.Message) -InformationAction Continue
    }
}

function Write-PlanStep {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Step
    )
    Write-Information -MessageData ('[dry-run] {0}' -f (ConvertTo-MaskedText -Text $Step)) -InformationAction Continue
}

function Stop-Bootstrap {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [int]$ExitCode,

        [Parameter(Mandatory = $true)]
        [string]$Message
    )
    Write-BootstrapLog -Message ('ERROR: {0}' -f $Message)
    Clear-Secret
    Remove-WorkDirectory
    exit $ExitCode
}

function Clear-Secret {
    [CmdletBinding()]
    param()
    $script:ActivationCode = $null
}

function ConvertTo-RedactedUrl {
    # A URL for the log: user:password@ replaced.
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [string]$Address
    )
    return ($Address -replace '^([a-z]+://)[^/@]*@', ('$1' + $script:Mask + '@'))
}

function ConvertTo-MaskedText {
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [string]$Text
    )
    if ([string]::IsNullOrEmpty($Text)) {
        return ''
    }
    if (-not [string]::IsNullOrEmpty($script:ActivationCode)) {
        $Text = $Text.Replace($script:ActivationCode, $script:Mask)
    }
    # The agent and ssm-setup-cli log every proxy variable's value, credentials included.
    return ($Text -replace '([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@', ('$1' + $script:Mask + '@'))
}

# ------------------------------------------------------------------- input

function Test-Truthy {
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [AllowNull()]
        [string]$Value
    )
    return @('1', 'true', 'yes', 'on') -contains ([string]$Value).ToLowerInvariant()
}

function Resolve-Setting {
    # A parameter given on the command line wins over its environment twin; values
    # from the environment pass the same validation as the parameter.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Name,

        [Parameter()]
        [AllowEmptyString()]
        [AllowNull()]
        [string]$Value,

        [Parameter(Mandatory = $true)]
        [string]$EnvName,

        [Parameter()]
        [string]$Pattern
    )
    if (-not [string]::IsNullOrEmpty($Value)) {
        return $Value
    }
    $fromEnv = [Environment]::GetEnvironmentVariable($EnvName)
    if ([string]::IsNullOrEmpty($fromEnv)) {
        return ''
    }
    if ($Pattern -and ($fromEnv -notmatch $Pattern)) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message ('{0} from {1} is not valid: {2}' -f $Name, $EnvName, $fromEnv)
    }
    return $fromEnv
}

function Test-LoopbackUrl {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Address
    )
    $uri = [Uri]$Address
    return ($uri.IsLoopback -or $uri.Host -eq 'localhost')
}

function Test-InstanceName {
    # The service's rules (lambda/src/pool/state.rs): a host name of DNS labels (plus _).
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [string]$Name
    )
    return ($Name -match $script:InstancePattern)
}

function Resolve-SecondsSetting {
    # -MaxWait / -OnlineWait: the parameter if given, else the environment twin.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Name,

        [Parameter(Mandatory = $true)]
        [int]$Value,

        [Parameter(Mandatory = $true)]
        [string]$EnvName,

        [Parameter(Mandatory = $true)]
        [int]$Minimum,

        [Parameter(Mandatory = $true)]
        [int]$Maximum
    )
    $fromEnv = [Environment]::GetEnvironmentVariable($EnvName)
    if ($script:BoundParameters.ContainsKey($Name) -or [string]::IsNullOrEmpty($fromEnv)) {
        return $Value
    }
    if ($fromEnv -notmatch '^[0-9]{1,5}\z' -or [int]$fromEnv -lt $Minimum -or [int]$fromEnv -gt $Maximum) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message ('{0} must be a whole number of seconds from {1} to {2}: {3}' -f $EnvName, $Minimum, $Maximum, $fromEnv)
    }
    return [int]$fromEnv
}

function Test-RegionName {
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [string]$Name
    )
    return ($Name -cmatch '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\z')
}

# ---------------------------------------------------------------- platform

function Test-Administrator {
    [CmdletBinding()]
    param()
    $identity = [Security.Principal.WindowsIdentity]::GetCurrent()
    $principal = New-Object Security.Principal.WindowsPrincipal($identity)
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Get-BucketDirectory {
    [CmdletBinding()]
    param()
    # A 32-bit PowerShell on 64-bit Windows reports x86 and keeps the truth in PROCESSOR_ARCHITEW6432.
    $arch = $env:PROCESSOR_ARCHITEW6432
    if ([string]::IsNullOrEmpty($arch)) {
        $arch = $env:PROCESSOR_ARCHITECTURE
    }
    switch ($arch) {
        'AMD64' {
            return 'windows_amd64'
        }
        'ARM64' {
            Stop-Bootstrap -ExitCode $script:ExitPlatform -Message 'no SSM Agent build for Windows on ARM64: AWS publishes the Windows agent and ssm-setup-cli for AMD64 only'
        }
        default {
            Stop-Bootstrap -ExitCode $script:ExitPlatform -Message ('unsupported architecture {0}; supported: AMD64, ARM64' -f $arch)
        }
    }
}

function Get-DownloadBase {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$RegionName
    )
    $suffix = 'amazonaws.com'
    if ($RegionName.StartsWith('cn-')) {
        $suffix = 'amazonaws.com.cn'
    }
    return ('https://amazon-ssm-{0}.s3.{0}.{1}' -f $RegionName, $suffix)
}

# ------------------------------------------------------------ registration

function Get-RegistrationFileId {
    # The managed instance ID in the registration file: a copy the agent writes after a
    # registration succeeds and never removes (not on a failed registration, not on -clear).
    [CmdletBinding()]
    param()
    if (-not (Test-Path -LiteralPath $script:RegistrationFile -PathType Leaf)) {
        return ''
    }
    try {
        $registration = Get-Content -LiteralPath $script:RegistrationFile -Raw | ConvertFrom-Json
    } catch {
        return ''
    }
    if ($null -eq $registration) {
        return ''
    }
    $property = $registration.PSObject.Properties['ManagedInstanceID']
    if ($null -ne $property -and ([string]$property.Value) -match '^mi-[0-9a-fA-F]+\z') {
        return [string]$property.Value
    }
    return ''
}

function Get-AgentIdentity {
    # The agent's own identity: what ssm-cli.exe get-instance-information reads from the
    # agent's vault (local only, it never asks SSM); without ssm-cli.exe the vault's
    # instanceID (only the ID is kept, never the key beside it). Empty after a failed
    # registration, which blanks it before asking SSM, and after -register -clear.
    [CmdletBinding()]
    param()
    $text = ''
    $pattern = '"instanceID"\s*:\s*"(mi-[0-9a-fA-F]+)"'
    if (Test-Path -LiteralPath $script:SsmCliExe -PathType Leaf) {
        try {
            $text = (& $script:SsmCliExe get-instance-information 2>$null) -join "`n"
        } catch {
            $text = ''
        }
        $pattern = '"instance-id"\s*:\s*"(mi-[0-9a-fA-F]+)"'
    } elseif (Test-Path -LiteralPath $script:VaultIdentity -PathType Leaf) {
        try {
            $text = [IO.File]::ReadAllText($script:VaultIdentity)
        } catch {
            $text = ''
        }
    }
    if ($text -match $pattern) {
        $id = $Matches[1]
        $text = ''
        return $id
    }
    $text = ''
    return ''
}

function Get-RegisteredInstanceId {
    # Registered means: the agent's own identity and the registration file name the
    # same managed instance.
    [CmdletBinding()]
    param()
    $fileId = Get-RegistrationFileId
    if (-not $fileId) {
        return ''
    }
    if ((Get-AgentIdentity) -ne $fileId) {
        return ''
    }
    return $fileId
}

function Get-RefusalCode {
    # The code of SSM's refusal in the agent's output ("Registration failed due to error
    # registering the instance with AWS SSM. InvalidActivation: ..."); a network error is
    # no refusal.
    [CmdletBinding()]
    param()
    if ($script:LastOutput -match 'Registration failed due to .*AWS SSM\. ([A-Za-z][A-Za-z0-9]*): ') {
        if (@('RequestError', 'RequestCanceled', 'SerializationError') -notcontains $Matches[1]) {
            return $Matches[1]
        }
    }
    return ''
}

function Stop-FailedRegistration {
    # A registration that failed, first or re-: the agent blanked its own identity before
    # it asked SSM, so this machine is unregistered whatever the registration file says.
    # Removes that stale file (and our record), says so, writes "refused: <Code>" when SSM
    # refused, exits 5. The next run registers afresh. The first refusal the service can
    # heal ($script:HealableRefusals) is not final: it sets $script:Refused and returns, and
    # Invoke-Bootstrap reports it and asks for an activation once more.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [int]$ExitCode,

        [Parameter(Mandatory = $true)]
        [string]$What,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId
    )
    foreach ($file in @($script:RegistrationFile, $script:IdentityFile)) {
        Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
    }
    Write-BootstrapLog -Message ('this machine is now UNREGISTERED: the agent clears its own identity before it asks SSM; removed {0}, the next run registers afresh' -f $script:RegistrationFile)
    $refusal = Get-RefusalCode
    if ($refusal -and $script:RefusalRetry -and ($script:HealableRefusals -contains $refusal)) {
        $script:RefusalRetry = $false
        $script:Refused = $refusal
        Write-BootstrapLog -Message ('SSM refused activation {0} ({1}): {2} could not register this server; reporting it and asking for an activation once more' -f $ActivationId, $refusal, $What)
        return
    }
    if ($refusal) {
        Write-Output ('refused: {0}' -f $refusal)
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('SSM refused activation {0} ({1}): {2} could not register this server' -f $ActivationId, $refusal, $What)
    }
    if ($ExitCode -eq 124) {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('{0} did not finish registering within {1}s: no route to SSM? (proxy: -Proxy; network: HTTPS to ssm in the region)' -f $What, $script:RegisterTimeoutSeconds)
    }
    if ($script:LastOutput -match 'AWS SSM\. RequestError: ') {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('{0} could not reach SSM (RequestError, see its output above): no route to SSM? (proxy: -Proxy; network: HTTPS to ssm in the region)' -f $What)
    }
    Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('{0} could not register this server with activation {1} (exit {2}; see its output above)' -f $What, $ActivationId, $ExitCode)
}

function Get-MachineIdDigest {
    # SHA-256 (lowercase hex) of the SMBIOS UUID, else of the MachineGuid registry value;
    # '' when neither is readable or holds a placeholder. The raw value is never sent or logged.
    [CmdletBinding()]
    param()
    $candidates = @()
    try {
        $product = Get-CimInstance -ClassName Win32_ComputerSystemProduct -ErrorAction Stop
        $candidates += [string]$product.UUID
    } catch {
        Write-BootstrapLog -Message 'no Win32_ComputerSystemProduct UUID; trying MachineGuid'
    }
    try {
        $candidates += [string](Get-ItemProperty -LiteralPath 'HKLM:\SOFTWARE\Microsoft\Cryptography' -Name MachineGuid -ErrorAction Stop).MachineGuid
    } catch {
        Write-BootstrapLog -Message 'no MachineGuid in HKLM:\SOFTWARE\Microsoft\Cryptography'
    }
    foreach ($candidate in $candidates) {
        $value = ([string]$candidate).Trim()
        if (-not $value -or $value -match '^[0-]+\z' -or $value -match '^[fF-]+\z') {
            continue
        }
        $sha = [System.Security.Cryptography.SHA256]::Create()
        try {
            $bytes = $sha.ComputeHash([Text.Encoding]::UTF8.GetBytes($value))
        } finally {
            $sha.Dispose()
        }
        return (($bytes | ForEach-Object { $_.ToString('x2') }) -join '')
    }
    return ''
}

function Get-RecordedIdentity {
    # What this script recorded beside a registration: machine=, instance=, online=.
    [CmdletBinding()]
    param()
    $recorded = @{ machine = ''; instance = ''; online = '' }
    if (-not (Test-Path -LiteralPath $script:IdentityFile -PathType Leaf)) {
        return $recorded
    }
    foreach ($line in (Get-Content -LiteralPath $script:IdentityFile)) {
        if ($line -match '^(machine|instance|online)=(.*)\z') {
            $recorded[$Matches[1]] = $Matches[2]
        }
    }
    return $recorded
}

function Save-RecordedIdentity {
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory = $true)]
        [string]$InstanceId,

        [Parameter(Mandatory = $true)]
        [ValidateSet('0', '1')]
        [string]$Online
    )
    if (-not $PSCmdlet.ShouldProcess($script:IdentityFile, 'Record the machine id digest')) {
        return
    }
    $text = 'machine={0}{3}instance={1}{3}online={2}{3}' -f $script:MachineId, $InstanceId, $Online, [Environment]::NewLine
    [IO.File]::WriteAllText($script:IdentityFile, $text)
}

function Clear-AgentRegistration {
    # The agent's own -register -clear (vault keys, hardware fingerprint), then the
    # registration file and our record, with the service stopped.
    [CmdletBinding(SupportsShouldProcess)]
    param()
    if (-not $PSCmdlet.ShouldProcess($script:RegistrationFile, 'Stop the agent and clear its registration')) {
        return
    }
    Stop-Service -Name $script:ServiceName -Force -ErrorAction SilentlyContinue
    if (Test-Path -LiteralPath $script:AgentExe -PathType Leaf) {
        $clearExit = Invoke-MaskedProcess -FilePath $script:AgentExe -Arguments '-register -clear' -Display 'amazon-ssm-agent.exe -register -clear'
        if ($clearExit -ne 0) {
            Write-BootstrapLog -Message ('warning: amazon-ssm-agent.exe -register -clear exited {0}' -f $clearExit)
        }
    }
    foreach ($file in @($script:RegistrationFile, $script:IdentityFile)) {
        Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
    }
}

function Set-AgentProxy {
    # AWS's way for the Windows agent: a MultiString value Environment under the
    # service's registry key with https_proxy, http_proxy and no_proxy.
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory = $true)]
        [string]$ProxyAddress,

        [Parameter()]
        [AllowEmptyString()]
        [string]$Bypass
    )
    $noProxy = $script:ImdsNoProxy
    if ($Bypass) {
        $noProxy = $noProxy + ',' + $Bypass
    }
    $values = [string[]]@(('https_proxy=' + $ProxyAddress), ('http_proxy=' + $ProxyAddress), ('no_proxy=' + $noProxy))
    if (-not $PSCmdlet.ShouldProcess($script:ServiceKey, 'Set the agent service Environment (proxy)')) {
        return
    }
    $null = New-ItemProperty -LiteralPath $script:ServiceKey -Name 'Environment' -PropertyType MultiString -Value $values -Force
    Write-BootstrapLog -Message ('agent proxy: {0} (no_proxy={1}) in {2}\Environment' -f (ConvertTo-RedactedUrl -Address $ProxyAddress), $noProxy, $script:ServiceKey)
}

function Get-AgentLogSize {
    [CmdletBinding()]
    param(
        [Parameter()]
        [string]$Path = $script:AgentLog
    )
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        return [long](Get-Item -LiteralPath $Path).Length
    }
    return [long]0
}

function Get-AgentLogSince {
    # An agent log from byte Offset on (from the start after a rotation); the agent
    # keeps it open, so it is read with FileShare.ReadWrite.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [long]$Offset,

        [Parameter()]
        [string]$Path = $script:AgentLog
    )
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
        return ''
    }
    $stream = New-Object System.IO.FileStream($Path, [IO.FileMode]::Open, [IO.FileAccess]::Read, [IO.FileShare]::ReadWrite)
    try {
        if ($stream.Length -ge $Offset) {
            $null = $stream.Seek($Offset, [IO.SeekOrigin]::Begin)
        }
        $reader = New-Object System.IO.StreamReader($stream)
        return $reader.ReadToEnd()
    } finally {
        $stream.Dispose()
    }
}

function Wait-AgentOnline {
    # Success means online: the agent's own identity and the registration file agreeing,
    # the service running, and the core agent's "Credentials ready" in amazon-ssm-agent.log
    # since it was started (it got credentials from Systems Manager). Each log is read
    # where it is written: the core's credential lines in amazon-ssm-agent.log, the
    # worker's "Entering SSM Agent hibernate" in ssm-agent-worker.log (fails at once).
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [long]$LogOffset,

        [Parameter(Mandatory = $true)]
        [long]$WorkerLogOffset,

        [Parameter(Mandatory = $true)]
        [int]$Seconds
    )
    $clock = [Diagnostics.Stopwatch]::StartNew()
    while ($true) {
        $instanceId = Get-RegisteredInstanceId
        $logText = Get-AgentLogSince -Offset $LogOffset -Path $script:AgentLog
        $workerText = Get-AgentLogSince -Offset $WorkerLogOffset -Path $script:WorkerLog
        if ($logText -match 'failed to find agent identity') {
            foreach ($file in @($script:RegistrationFile, $script:IdentityFile)) {
                Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
            }
            Stop-Bootstrap -ExitCode $script:ExitRegister -Message ("the agent has no identity ('failed to find agent identity' in {0}): this machine is UNREGISTERED; removed {1}, the next run registers afresh" -f $script:AgentLog, $script:RegistrationFile)
        } elseif (-not $instanceId) {
            $reason = "not registered: the agent's own identity and {0} do not name the same managed instance" -f $script:RegistrationFile
        } elseif (-not (Test-AgentRunning)) {
            $reason = 'registered as {0} but {1} is not running' -f $instanceId, $script:ServiceName
        } elseif ($workerText -match '(?m)^.*Entering SSM Agent hibernate.*$') {
            Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('registered as {0} but the agent cannot reach Systems Manager and hibernates: {1} (proxy: -Proxy; network: HTTPS to ssm, ssmmessages, ec2messages)' -f $instanceId, (ConvertTo-MaskedText -Text $Matches[0].Trim()))
        } elseif ($logText -match 'Credentials ready') {
            return $instanceId
        } elseif ($logText -match '(?m)^.*Retrieve credentials produced error.*$') {
            $reason = 'registered as {0} but the agent cannot get credentials from Systems Manager: {1} (no route to SSM? proxy: -Proxy; network: HTTPS to ssm, ssmmessages, ec2messages)' -f $instanceId, (ConvertTo-MaskedText -Text $Matches[0].Trim())
        } else {
            $reason = "registered as {0} and {1} is running, but the agent has not reported connecting to Systems Manager (no 'Credentials ready' in {2})" -f $instanceId, $script:ServiceName, $script:AgentLog
        }
        if ($clock.Elapsed.TotalSeconds -ge $Seconds) {
            Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('not online after -OnlineWait {0}s: {1}' -f $Seconds, $reason)
        }
        Start-Sleep -Seconds 1
    }
}

function Test-AgentRunning {
    [CmdletBinding()]
    param()
    $service = Get-Service -Name $script:ServiceName -ErrorAction SilentlyContinue
    return ($null -ne $service -and $service.Status -eq 'Running')
}

function Start-AgentService {
    [CmdletBinding(SupportsShouldProcess)]
    param()
    if (-not $PSCmdlet.ShouldProcess($script:ServiceName, 'Set startup type Automatic and restart')) {
        return
    }
    Set-Service -Name $script:ServiceName -StartupType Automatic
    Restart-Service -Name $script:ServiceName -Force
}

# ---------------------------------------------------------------- the fetch

function Set-Tls12 {
    [CmdletBinding(SupportsShouldProcess)]
    param()
    # Windows PowerShell 5.1 on older .NET defaults to TLS 1.0; add TLS 1.2 for this process.
    if ($PSCmdlet.ShouldProcess('this process', 'Enable TLS 1.2')) {
        [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    }
}

function Set-CaBundleValidation {
    # Trust exactly the CA(s) in the bundle for this process (Windows PowerShell 5.1:
    # Invoke-RestMethod there uses ServicePointManager's validation callback).
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Path
    )
    if ($PSVersionTable.PSVersion.Major -ge 6) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message '-CaBundle needs Windows PowerShell 5.1 (powershell.exe); with PowerShell 7 import the CA into Cert:\LocalMachine\Root'
    }
    $collection = New-Object System.Security.Cryptography.X509Certificates.X509Certificate2Collection
    $collection.Import((Resolve-Path -LiteralPath $Path).ProviderPath)
    if ($collection.Count -eq 0) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message ('-CaBundle {0} holds no certificate' -f $Path)
    }
    $script:TrustedCas = $collection
    if (-not $PSCmdlet.ShouldProcess('this process', 'Trust the CA bundle for HTTPS')) {
        return
    }
    [Net.ServicePointManager]::ServerCertificateValidationCallback = {
        param($requestSender, $certificate, $chain, $sslPolicyErrors)
        if ($sslPolicyErrors -eq [Net.Security.SslPolicyErrors]::None) {
            return $true
        }
        # Only an untrusted root is forgiven, and only for a root in the bundle.
        if ($sslPolicyErrors -ne [Net.Security.SslPolicyErrors]::RemoteCertificateChainErrors) {
            return $false
        }
        $custom = New-Object System.Security.Cryptography.X509Certificates.X509Chain
        $custom.ChainPolicy.RevocationMode = [System.Security.Cryptography.X509Certificates.X509RevocationMode]::NoCheck
        $custom.ChainPolicy.VerificationFlags = [System.Security.Cryptography.X509Certificates.X509VerificationFlags]::AllowUnknownCertificateAuthority
        foreach ($ca in $script:TrustedCas) {
            [void]$custom.ChainPolicy.ExtraStore.Add($ca)
        }
        if (-not $custom.Build([System.Security.Cryptography.X509Certificates.X509Certificate2]$certificate)) {
            return $false
        }
        $root = $custom.ChainElements[$custom.ChainElements.Count - 1].Certificate
        foreach ($ca in $script:TrustedCas) {
            if ($ca.Thumbprint -eq $root.Thumbprint) {
                return $true
            }
        }
        return $false
    }
}

function Get-ActivationUri {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$BaseUrl,

        [Parameter()]
        [AllowEmptyString()]
        [string]$PoolName,

        [Parameter()]
        [AllowEmptyString()]
        [string]$InstanceName
    )
    $base = $BaseUrl.TrimEnd('/')
    if (-not $base.EndsWith('/activation')) {
        $base = $base + '/activation'
    }
    $query = @()
    if ($PoolName) {
        $query += ('pool=' + [Uri]::EscapeDataString($PoolName))
    }
    if ($InstanceName) {
        $query += ('instance=' + [Uri]::EscapeDataString($InstanceName))
    }
    if ($query.Count -gt 0) {
        return ($base + '?' + ($query -join '&'))
    }
    return $base
}

function Get-HttpFailure {
    # Status code and Retry-After from an Invoke-RestMethod failure, for both
    # Windows PowerShell 5.1 (WebException/HttpWebResponse) and PowerShell 7
    # (HttpResponseException/HttpResponseMessage).
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [System.Management.Automation.ErrorRecord]$ErrorRecord
    )
    $result = @{ Status = 0; RetryAfter = -1; Message = $ErrorRecord.Exception.Message; Detail = ''; Code = '' }
    $exception = $ErrorRecord.Exception
    $response = $null
    if ($null -ne $exception.PSObject.Properties['Response']) {
        $response = $exception.Response
    }
    if ($null -eq $response) {
        return $result
    }
    $result.Status = [int]$response.StatusCode
    # The service's JSON error ({"error":{"code":...,"message":...}}); never an activation body.
    if ($null -ne $ErrorRecord.ErrorDetails -and $ErrorRecord.ErrorDetails.Message -match '"message"\s*:\s*"((?:[^"\\]|\\.){0,200})') {
        $result.Detail = $Matches[1]
    }
    if ($null -ne $ErrorRecord.ErrorDetails -and $ErrorRecord.ErrorDetails.Message -match '"code"\s*:\s*"([A-Za-z0-9]{1,64})"') {
        $result.Code = $Matches[1]
    }
    $retryAfter = $null
    if ($response -is [System.Net.HttpWebResponse]) {
        try {
            $retryAfter = $response.Headers['Retry-After']
        } finally {
            # Windows PowerShell 5.1 leaves a failed response open, and with it one of the
            # two connections .NET allows per host: close it, or the retries stall.
            $response.Close()
        }
    } elseif ($null -ne $response.PSObject.Properties['Headers'] -and $null -ne $response.Headers.RetryAfter) {
        if ($null -ne $response.Headers.RetryAfter.Delta) {
            $retryAfter = [string][int]$response.Headers.RetryAfter.Delta.TotalSeconds
        }
    }
    if ($retryAfter -match '^\s*[0-9]{1,5}\s*\z') {
        $result.RetryAfter = [int]$retryAfter
    }
    return $result
}

function Get-PoolVerdict {
    # The service's final answers about a pool (issue 10), or $null for any other failure.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [int]$Status,

        [Parameter()]
        [AllowEmptyString()]
        [string]$Code
    )
    switch ('{0}:{1}' -f $Status, $Code) {
        '404:PoolNotFound' { return @{ Reason = 'does not exist'; Hint = ': check -Pool' } }
        '403:PoolDisabled' { return @{ Reason = 'is disabled'; Hint = '' } }
        '403:Forbidden' { return @{ Reason = 'refuses this server'; Hint = ': its address is not in the pool''s allowed_cidrs' } }
        '500:PoolMisconfigured' { return @{ Reason = 'is misconfigured'; Hint = ': its operator must fix the pool''s config' } }
    }
    return $null
}

function Get-ServiceRequestArgument {
    # Splat for Invoke-RestMethod: one request to the vending service, as the vend and
    # the reports make it. JSON accepted; x-apigw-api-id when an API ID is given;
    # X-Machine-Id once the machine id is known; -Proxy unless the address is loopback;
    # a GET, or a POST of -JsonBody as application/json. Each attempt adds its -TimeoutSec.
    [CmdletBinding(DefaultParameterSetName = 'Get')]
    param(
        [Parameter(Mandatory = $true)]
        [ValidateNotNullOrEmpty()]
        [string]$Uri,

        [Parameter(Mandatory = $true, ParameterSetName = 'Post')]
        [ValidateNotNullOrEmpty()]
        [string]$JsonBody,

        [Parameter()]
        [AllowEmptyString()]
        [string]$ApiGatewayId
    )
    $headers = @{ 'Accept' = 'application/json' }
    if ($ApiGatewayId) {
        $headers['x-apigw-api-id'] = $ApiGatewayId
    }
    if ($script:MachineId) {
        $headers['X-Machine-Id'] = $script:MachineId
    }
    $request = @{ Uri = $Uri; Method = 'Get'; Headers = $headers; UseBasicParsing = $true }
    if ($PSCmdlet.ParameterSetName -eq 'Post') {
        $request['Method'] = 'Post'
        $request['Body'] = $JsonBody
        $request['ContentType'] = 'application/json'
    }
    $proxyArguments = Get-ProxyArgument -Address $Uri
    return ($request + $proxyArguments)
}

function Get-VendedActivation {
    # GET the activation with retries: exponential backoff with jitter on network
    # failures and 5xx, the server's Retry-After on 503/429, and a hard deadline.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Uri,

        [Parameter()]
        [AllowEmptyString()]
        [string]$ApiGatewayId,

        [Parameter()]
        [AllowEmptyString()]
        [string]$PoolName,

        [Parameter(Mandatory = $true)]
        [int]$MaxWaitSeconds
    )
    $poolLabel = $(if ($PoolName) { $PoolName } else { 'default' })
    $request = Get-ServiceRequestArgument -Uri $Uri -ApiGatewayId $ApiGatewayId
    $random = New-Object System.Random
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $backoffMs = 1000
    $attempt = 0
    $lastError = 'none'
    Write-BootstrapLog -Message ('fetching activation: GET {0}{1}' -f $Uri, $(if ($script:MachineId) { ' (X-Machine-Id: ' + $script:MachineId.Substring(0, 12) + '...)' } else { '' }))
    while ($true) {
        $remaining = $MaxWaitSeconds - [int]$clock.Elapsed.TotalSeconds
        if ($remaining -le 0) {
            Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('gave up fetching an activation after {0}s and {1} attempt(s) (-MaxWait {0}); last error: {2}' -f $MaxWaitSeconds, $attempt, $lastError)
        }
        $attempt++
        $perTry = [Math]::Min($remaining, 30)
        $retryAfter = -1
        try {
            $response = Invoke-RestMethod @request -TimeoutSec $perTry
            return $response
        } catch {
            $failure = Get-HttpFailure -ErrorRecord $_
            if ($failure.Status -eq 0) {
                $lastError = $failure.Message
            } else {
                $lastError = 'HTTP {0}' -f $failure.Status
                # The pool's own verdicts are final: asking again gets the same answer.
                $verdict = Get-PoolVerdict -Status $failure.Status -Code $failure.Code
                $detail = $(if ($failure.Detail) { ': ' + $failure.Detail } else { '' })
                if ($verdict) {
                    Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('pool ''{0}'' {1} (HTTP {2} {3}{4}){5}; not retried' -f $poolLabel, $verdict.Reason, $failure.Status, $failure.Code, $detail, $verdict.Hint)
                }
                switch ($failure.Status) {
                    { $_ -eq 429 -or $_ -eq 503 } {
                        $retryAfter = $failure.RetryAfter
                        $lastError = '{0} (Retry-After: {1})' -f $lastError, $retryAfter
                    }
                    { $_ -eq 500 -or $_ -eq 502 -or $_ -eq 504 } {
                        if ($failure.Code) {
                            $lastError = '{0} {1}' -f $lastError, $failure.Code
                        }
                    }
                    400 {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('the service rejected the request (HTTP 400: {0}): check -Pool and -Instance; not retried' -f $failure.Detail)
                    }
                    { $_ -eq 401 -or $_ -eq 403 } {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('access denied (HTTP {0} {1}{2}): a private API is reachable only through its VPC endpoint (with the endpoint''s own DNS name pass -ApiId) and, when the stack sets AllowedSourceCidrs, only from those addresses; not retried' -f $failure.Status, $failure.Code, $detail)
                    }
                    404 {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('not found (HTTP 404 {0}{1}): unknown pool ''{2}'' or wrong -Url; not retried' -f $failure.Code, $detail, $poolLabel)
                    }
                    default {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('unexpected answer from the service: HTTP {0}' -f $failure.Status)
                    }
                }
            }
        }
        if ($retryAfter -ge 0) {
            $waitMs = $retryAfter * 1000 + $random.Next(0, 1000)
        } else {
            $waitMs = [int]($backoffMs / 2) + $random.Next(0, [int]($backoffMs / 2))
            $backoffMs = [Math]::Min($backoffMs * 2, 16000)
        }
        $remainingMs = ($MaxWaitSeconds * 1000) - [int]$clock.Elapsed.TotalMilliseconds
        $waitMs = [Math]::Max(0, [Math]::Min($waitMs, $remainingMs))
        Write-BootstrapLog -Message ('attempt {0} failed ({1}); retrying in {2:N1}s' -f $attempt, $lastError, ($waitMs / 1000))
        Start-Sleep -Milliseconds $waitMs
    }
}

function Get-RegistrationsUri {
    # Where registrations are reported: beside /activation, with the vend's pool query.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$BaseUrl,

        [Parameter()]
        [AllowEmptyString()]
        [string]$PoolName
    )
    $base = $BaseUrl.TrimEnd('/')
    if ($base.EndsWith('/activation')) {
        $base = $base.Substring(0, $base.Length - '/activation'.Length)
    }
    $base = $base + '/registrations'
    if ($PoolName) {
        return ($base + '?pool=' + [Uri]::EscapeDataString($PoolName))
    }
    return $base
}

function Send-RegistrationReport {
    # POST /registrations (issue 22) within $script:ReportWaitSeconds: 429/503 follow
    # Retry-After, a network failure is tried again after a second, anything else is the
    # answer. Never throws: returns the 200 answer, or $null after writing a WARNING.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Uri,

        [Parameter(Mandatory = $true)]
        [System.Collections.Specialized.OrderedDictionary]$Body,

        [Parameter()]
        [AllowEmptyString()]
        [string]$ApiGatewayId,

        [Parameter(Mandatory = $true)]
        [string]$What
    )
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $lastError = 'none'
    try {
        # ConvertTo-Json escapes whatever it is given; the values were checked anyway.
        $json = ConvertTo-Json -InputObject $Body -Compress
        $request = Get-ServiceRequestArgument -Uri $Uri -JsonBody $json -ApiGatewayId $ApiGatewayId
        while ($true) {
            $remaining = $script:ReportWaitSeconds - [int]$clock.Elapsed.TotalSeconds
            if ($remaining -le 0) {
                break
            }
            $pause = -1
            try {
                return (Invoke-RestMethod @request -TimeoutSec $remaining)
            } catch {
                $failure = Get-HttpFailure -ErrorRecord $_
                if ($failure.Status -eq 0) {
                    $lastError = $failure.Message
                    $pause = 1
                } else {
                    $lastError = 'HTTP {0} {1}{2}' -f $failure.Status, $failure.Code, $(if ($failure.Detail) { ': ' + $failure.Detail } else { '' })
                    if ($failure.Status -eq 429 -or $failure.Status -eq 503) {
                        $pause = [Math]::Max($failure.RetryAfter, 1)
                    }
                }
            }
            $remaining = $script:ReportWaitSeconds - [int]$clock.Elapsed.TotalSeconds
            if ($pause -lt 0 -or $pause -ge $remaining) {
                break
            }
            Write-BootstrapLog -Message ('reporting to the service: {0}; trying again in {1}s' -f $lastError, $pause)
            Start-Sleep -Seconds $pause
        }
    } catch {
        $lastError = $_.Exception.Message
    }
    Write-BootstrapLog -Message ('WARNING: {0} ({1})' -f $What, $lastError)
    return $null
}

function Confirm-Registration {
    # Confirms this registration with the service, which tags the node (Name = the
    # instance name) and may deregister this machine's older offline nodes. A warning at
    # worst, never a failed boot.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Uri,

        [Parameter(Mandatory = $true)]
        [string]$InstanceId,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter()]
        [AllowEmptyString()]
        [string]$InstanceName,

        [Parameter()]
        [AllowEmptyString()]
        [string]$ApiGatewayId
    )
    if ($InstanceId -cnotmatch '^mi-[0-9a-f]{17}\z' -or $ActivationId -notmatch $script:ActivationIdPattern) {
        Write-BootstrapLog -Message ('WARNING: not confirming the registration: the managed instance ID {0} or activation ID is not of the expected form' -f $InstanceId)
        return
    }
    $body = [ordered]@{ InstanceId = $InstanceId; ActivationId = $ActivationId }
    if ($InstanceName -and $InstanceName -match $script:InstancePattern) {
        $body['Instance'] = $InstanceName
    }
    Write-BootstrapLog -Message ('confirming the registration: POST {0} (InstanceId {1}, ActivationId {2})' -f $Uri, $InstanceId, $ActivationId)
    $answer = Send-RegistrationReport -Uri $Uri -Body $body -ApiGatewayId $ApiGatewayId -What 'the service did not confirm the registration; this server is registered all the same (no Name tag from the service)'
    if ($null -eq $answer -or $answer -isnot [System.Management.Automation.PSCustomObject]) {
        return
    }
    # Tags: an object of keys, or a list of Key/Value pairs.
    $name = 'none'
    $tags = $answer.PSObject.Properties['Tags']
    if ($null -ne $tags -and $null -ne $tags.Value) {
        $nameTag = ''
        foreach ($tag in @($tags.Value)) {
            $key = $tag.PSObject.Properties['Key']
            $value = $tag.PSObject.Properties['Value']
            $named = $tag.PSObject.Properties['Name']
            if ($null -ne $key -and [string]$key.Value -ceq 'Name' -and $null -ne $value) {
                $nameTag = [string]$value.Value
            } elseif ($null -ne $named -and $null -eq $key) {
                $nameTag = [string]$named.Value
            }
        }
        if ($nameTag -match $script:InstancePattern) {
            $name = $nameTag
        }
    }
    $replaced = @()
    $list = $answer.PSObject.Properties['Replaced']
    if ($null -ne $list -and $null -ne $list.Value) {
        $replaced = @($list.Value | Where-Object { [string]$_ -cmatch '^mi-[0-9a-f]{17}\z' })
    }
    Write-Output ('confirmed: {0} (Name={1}; replaced: {2})' -f $InstanceId, $name, $(if ($replaced.Count -gt 0) { $replaced -join ', ' } else { 'none' }))
}

function Send-RefusalReport {
    # Tells the service that SSM refused its activation; it checks that with SSM and
    # retires the activation if SSM agrees. A warning at worst.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Uri,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter(Mandatory = $true)]
        [string]$Refusal,

        [Parameter()]
        [AllowEmptyString()]
        [string]$ApiGatewayId
    )
    if ($ActivationId -notmatch $script:ActivationIdPattern -or $Refusal -cnotmatch '^[A-Za-z]{1,64}\z') {
        return
    }
    $body = [ordered]@{ ActivationId = $ActivationId; Error = $Refusal }
    Write-BootstrapLog -Message ('reporting the refusal: POST {0} (ActivationId {1}, Error {2})' -f $Uri, $ActivationId, $Refusal)
    $answer = Send-RegistrationReport -Uri $Uri -Body $body -ApiGatewayId $ApiGatewayId -What 'the service did not take the refusal report'
    if ($null -eq $answer -or $answer -isnot [System.Management.Automation.PSCustomObject]) {
        return
    }
    $confirmed = 'unknown'
    $property = $answer.PSObject.Properties['Confirmed']
    if ($null -ne $property -and $property.Value -is [bool]) {
        $confirmed = $(if ($property.Value) { 'true (retired)' } else { 'false' })
    }
    Write-BootstrapLog -Message ('the service checked activation {0} with SSM: Confirmed {1}' -f $ActivationId, $confirmed)
}

function Get-ProxyArgument {
    # Splat for Invoke-RestMethod / Invoke-WebRequest: -Proxy unless there is none or the
    # address is loopback (never proxied; -NoProxy is PowerShell 7 only).
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Address
    )
    if (-not $script:ProxyUrl -or (Test-LoopbackUrl -Address $Address)) {
        return @{}
    }
    return @{ Proxy = $script:ProxyUrl }
}

function Test-ActivationResponse {
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowNull()]
        [object]$Response
    )
    # Invoke-RestMethod returns a string when the body is not JSON it can parse.
    if ($null -eq $Response -or $Response -is [string] -or $Response -isnot [System.Management.Automation.PSCustomObject]) {
        return $false
    }
    foreach ($name in @('ActivationId', 'ActivationCode')) {
        $property = $Response.PSObject.Properties[$name]
        if ($null -eq $property -or -not ($property.Value -is [string]) -or [string]::IsNullOrEmpty($property.Value)) {
            return $false
        }
    }
    if ($Response.ActivationId -notmatch $script:ActivationIdPattern) {
        return $false
    }
    return ($Response.ActivationCode -match '^[A-Za-z0-9+/=_-]{1,256}\z')
}

function Get-OptionalProperty {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [object]$InputObject,

        [Parameter(Mandatory = $true)]
        [string]$Name
    )
    $property = $InputObject.PSObject.Properties[$Name]
    if ($null -eq $property -or $null -eq $property.Value) {
        return ''
    }
    return [string]$property.Value
}

# ------------------------------------------------------------------ install

function New-WorkDirectory {
    [CmdletBinding(SupportsShouldProcess)]
    param()
    $path = Join-Path ([IO.Path]::GetTempPath()) ('ssm-bootstrap-' + [Guid]::NewGuid().ToString('N'))
    if ($PSCmdlet.ShouldProcess($path, 'Create working directory')) {
        $null = New-Item -ItemType Directory -Path $path -Force
    }
    $script:WorkDir = $path
    return $path
}

function Remove-WorkDirectory {
    [CmdletBinding()]
    param()
    if ($script:WorkDir -and (Test-Path -LiteralPath $script:WorkDir)) {
        Remove-Item -LiteralPath $script:WorkDir -Recurse -Force -ErrorAction SilentlyContinue
    }
}

function Save-Download {
    # Retried with backoff until -MaxWait, except when the file is not there (404/403:
    # returns $false). The file must then carry a valid Authenticode signature by Amazon.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Source,

        [Parameter(Mandatory = $true)]
        [string]$Destination,

        [Parameter(Mandatory = $true)]
        [int]$MaxWaitSeconds
    )
    $proxyArguments = Get-ProxyArgument -Address $Source
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $random = New-Object System.Random
    $backoffMs = 1000
    $try = 0
    while ($true) {
        $try++
        try {
            Invoke-WebRequest -Uri $Source -OutFile $Destination -UseBasicParsing -TimeoutSec 600 @proxyArguments
            break
        } catch {
            $failure = Get-HttpFailure -ErrorRecord $_
            if ($failure.Status -eq 403 -or $failure.Status -eq 404) {
                Write-BootstrapLog -Message ('{0} is not there (HTTP {1})' -f $Source, $failure.Status)
                return $false
            }
            if ($clock.Elapsed.TotalSeconds -ge $MaxWaitSeconds) {
                Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('could not download {0} within -MaxWait {1}: {2}' -f $Source, $MaxWaitSeconds, $failure.Message)
            }
            $waitMs = [int]($backoffMs / 2) + $random.Next(0, [int]($backoffMs / 2))
            $backoffMs = [Math]::Min($backoffMs * 2, 16000)
            Write-BootstrapLog -Message ('download of {0} failed (try {1}): {2}; retrying in {3:N1}s' -f $Source, $try, $failure.Message, ($waitMs / 1000))
            Start-Sleep -Milliseconds $waitMs
        }
    }
    Assert-AmazonSignature -Path $Destination -Source $Source
    return $true
}

function Assert-AmazonSignature {
    # Verified installs only: a valid Authenticode signature whose signer certificate's CN
    # is exactly "Amazon.com Services LLC", the name ssm-setup-cli itself requires
    # (agent/setupcli/managers/verificationmanagers/windowsmanager.go); Amazon elsewhere
    # in the subject is not enough.
    # A missing, foreign or broken signature is never accepted; one that cannot be
    # checked (UnknownError, e.g. no way to build the chain yet) only with -AllowUnverified.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Path,

        [Parameter(Mandatory = $true)]
        [string]$Source
    )
    $signature = Get-AuthenticodeSignature -FilePath $Path
    $signer = ''
    $signerName = ''
    if ($null -ne $signature.SignerCertificate) {
        $signer = $signature.SignerCertificate.Subject
        $signerName = $signature.SignerCertificate.GetNameInfo([Security.Cryptography.X509Certificates.X509NameType]::SimpleName, $false)
    }
    if ([string]$signature.Status -eq 'Valid' -and $signerName -ceq $script:AgentSignerName) {
        Write-BootstrapLog -Message ('verified {0}: signed by {1}' -f (Split-Path -Leaf $Path), $signer)
        return
    }
    if ([string]$signature.Status -eq 'UnknownError' -and $script:AllowUnverifiedRun) {
        Write-BootstrapLog -Message ('WARNING: running {0} UNVERIFIED (-AllowUnverified): its signature could not be checked ({1})' -f $Source, $signature.StatusMessage)
        return
    }
    Remove-Item -LiteralPath $Path -Force -ErrorAction SilentlyContinue
    Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('{0}: signature is {1} (signer "{2}"), not a valid Amazon signature; not running it{3}' -f $Source, $signature.Status, $signer, $(if ([string]$signature.Status -eq 'UnknownError') { ' (-AllowUnverified accepts a signature that cannot be checked)' } else { '' }))
}

function Invoke-MaskedProcess {
    # Runs a program whose arguments hold the activation code. System.Diagnostics.Process
    # rather than Start-Process: module logging records cmdlet parameters, not this.
    # Output is relayed with the code masked. Returns the exit code.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$FilePath,

        [Parameter(Mandatory = $true)]
        [string]$Arguments,

        [Parameter(Mandatory = $true)]
        [string]$Display,

        [Parameter()]
        [int]$TimeoutSeconds = 900
    )
    Write-BootstrapLog -Message ('running: {0}' -f $Display)
    $script:LastOutput = ''
    $startInfo = New-Object System.Diagnostics.ProcessStartInfo
    $startInfo.FileName = $FilePath
    $startInfo.Arguments = $Arguments
    $startInfo.UseShellExecute = $false
    $startInfo.RedirectStandardOutput = $true
    $startInfo.RedirectStandardError = $true
    $startInfo.RedirectStandardInput = $true
    $startInfo.CreateNoWindow = $true
    $startInfo.WorkingDirectory = Split-Path -Parent $FilePath
    $process = New-Object System.Diagnostics.Process
    $process.StartInfo = $startInfo
    $null = $process.Start()
    # Nothing may wait for an answer on stdin (a re-registration prompt).
    $process.StandardInput.Close()
    $stdout = $process.StandardOutput.ReadToEndAsync()
    $stderr = $process.StandardError.ReadToEndAsync()
    if (-not $process.WaitForExit($TimeoutSeconds * 1000)) {
        try {
            $process.Kill()
        } catch {
            Write-BootstrapLog -Message 'could not stop the timed-out process'
        }
        Write-BootstrapLog -Message ('{0} did not finish within {1}s' -f (Split-Path -Leaf $FilePath), $TimeoutSeconds)
        $script:LastOutput = ''
        return 124
    }
    $process.WaitForExit()
    $relayed = New-Object System.Collections.Generic.List[string]
    foreach ($text in @($stdout.Result, $stderr.Result)) {
        foreach ($line in ($text -split "`r?`n")) {
            if ($line.Trim()) {
                $masked = ConvertTo-MaskedText -Text $line
                $relayed.Add($masked)
                Write-Information -MessageData ('    | ' + $masked) -InformationAction Continue
                Add-BootstrapLogLine -Line ('    | ' + $masked)
            }
        }
    }
    $script:LastOutput = $relayed -join "`n"
    return $process.ExitCode
}

function Register-WithSetupCli {
    # ssm-setup-cli installs the agent (verifying its Authenticode signature itself: we
    # never pass -skip-signature-validation), registers and starts it.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$SetupCli,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter(Mandatory = $true)]
        [string]$RegionName,

        [Parameter()]
        [switch]$Override
    )
    $tail = ' -activation-id={0} -region={1}' -f $ActivationId, $RegionName
    if ($Override) {
        $tail = $tail + ' -override'
    }
    # The code is passed as an argument because ssm-setup-cli has no other way to take it.
    $arguments = '-register -activation-code=' + $script:ActivationCode + $tail
    $display = 'ssm-setup-cli.exe -register -activation-code=' + $script:Mask + $tail
    return (Invoke-MaskedProcess -FilePath $SetupCli -Arguments $arguments -Display $display)
}

function Register-WithAgent {
    # The installed agent registers itself: -register -code -id -region -y (-y answers the
    # "already registered, override?" prompt, so nothing waits on stdin).
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter(Mandatory = $true)]
        [string]$RegionName
    )
    Stop-Service -Name $script:ServiceName -Force -ErrorAction SilentlyContinue
    $tail = ' -id={0} -region={1} -y' -f $ActivationId, $RegionName
    $arguments = '-register -code=' + $script:ActivationCode + $tail
    $display = 'amazon-ssm-agent.exe -register -code=' + $script:Mask + $tail + (' (within {0}s)' -f $script:RegisterTimeoutSeconds)
    return (Invoke-MaskedProcess -FilePath $script:AgentExe -Arguments $arguments -Display $display -TimeoutSeconds $script:RegisterTimeoutSeconds)
}

function Install-AgentPackage {
    # Fallback: the regional agent installer, signature-checked. With CODE/ID/REGION it
    # registers during install.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$BaseUrl,

        [Parameter(Mandatory = $true)]
        [string]$BucketDirectory,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter(Mandatory = $true)]
        [string]$RegionName,

        [Parameter(Mandatory = $true)]
        [int]$MaxWaitSeconds
    )
    $source = '{0}/latest/{1}/AmazonSSMAgentSetup.exe' -f $BaseUrl, $BucketDirectory
    $installer = Join-Path $script:WorkDir 'AmazonSSMAgentSetup.exe'
    Write-BootstrapLog -Message ('fallback: installing the agent from {0}' -f $source)
    if (-not (Save-Download -Source $source -Destination $installer -MaxWaitSeconds $MaxWaitSeconds)) {
        Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('could not download {0}' -f $source)
    }
    # The installer writes its command line, CODE= included, into its log: the log goes
    # to the working directory (without /log it would land in %TEMP% and stay) and is
    # deleted as soon as the installer exits, not only with the working directory.
    $log = Join-Path $script:WorkDir 'install.log'
    $tail = ' ID={0} REGION={1}' -f $ActivationId, $RegionName
    $arguments = '/q /log "' + $log + '" CODE=' + $script:ActivationCode + $tail
    $display = 'AmazonSSMAgentSetup.exe /q /log install.log CODE=' + $script:Mask + $tail
    try {
        $exitCode = Invoke-MaskedProcess -FilePath $installer -Arguments $arguments -Display $display
    }
    finally {
        Remove-Item -LiteralPath $log -Force -ErrorAction SilentlyContinue
    }
    if ($exitCode -eq 3010) {
        # ERROR_SUCCESS_REBOOT_REQUIRED: installed; Windows wants a restart to finish.
        Write-BootstrapLog -Message 'WARNING: the agent installer succeeded (exit 3010) but Windows must be restarted to complete the installation; restart this server when you can'
        return 0
    }
    return $exitCode
}

# --------------------------------------------------------------------- main

function Invoke-PrepareImage {
    # -PrepareImage: the machine is about to be captured; every clone must register as itself.
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory = $true)]
        [bool]$IsDryRun
    )
    if ($IsDryRun) {
        Write-PlanStep -Step ('Stop-Service {0}; amazon-ssm-agent.exe -register -clear; remove {1} and {2}' -f $script:ServiceName, $script:RegistrationFile, $script:IdentityFile)
        Write-Output 'dry run complete: nothing was changed'
        return
    }
    $existing = Get-RegistrationFileId
    Clear-AgentRegistration
    Write-BootstrapLog -Message ('prepared for imaging: {0} stopped, registration {1} cleared; generalize the image (sysprep) so clones get their own MachineGuid' -f $script:ServiceName, $(if ($existing) { $existing } else { '(none)' }))
    Write-Output 'image prepared: the agent is stopped and unregistered'
}

function Confirm-AgentOnline {
    # Starts the agent and waits until it is online; records the result beside the
    # registration. Returns the managed instance ID.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [int]$OnlineWaitSeconds
    )
    if ($script:ProxyUrl) {
        Set-AgentProxy -ProxyAddress $script:ProxyUrl -Bypass $script:NoProxyList
    }
    $offset = Get-AgentLogSize -Path $script:AgentLog
    $workerOffset = Get-AgentLogSize -Path $script:WorkerLog
    $pending = Get-RegisteredInstanceId
    if ($pending) {
        # If the agent is not seen online now, the next run checks again.
        Save-RecordedIdentity -InstanceId $pending -Online '0'
    }
    try {
        Start-AgentService
    } catch {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('could not start {0}: {1}' -f $script:ServiceName, $_.Exception.Message)
    }
    $instanceId = Wait-AgentOnline -LogOffset $offset -WorkerLogOffset $workerOffset -Seconds $OnlineWaitSeconds
    Save-RecordedIdentity -InstanceId $instanceId -Online '1'
    return $instanceId
}

function Invoke-Bootstrap {
    [CmdletBinding(SupportsShouldProcess)]
    param()

    $settings = @{
        Url      = Resolve-Setting -Name 'Url' -Value $Url -EnvName 'VENDING_URL' -Pattern '^https?://[^\s?#]+\z'
        Pool     = Resolve-Setting -Name 'Pool' -Value $Pool -EnvName 'VENDING_POOL' -Pattern $script:PoolPattern
        Instance = Resolve-Setting -Name 'Instance' -Value $Instance -EnvName 'VENDING_INSTANCE' -Pattern $script:InstancePattern
        Region   = Resolve-Setting -Name 'Region' -Value $Region -EnvName 'VENDING_REGION' -Pattern '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\z'
        ApiId    = Resolve-Setting -Name 'ApiId' -Value $ApiId -EnvName 'VENDING_API_ID' -Pattern '^[a-z0-9]{1,32}\z'
        CaBundle = Resolve-Setting -Name 'CaBundle' -Value $CaBundle -EnvName 'VENDING_CA_BUNDLE'
        Proxy    = Resolve-Setting -Name 'Proxy' -Value $Proxy -EnvName 'VENDING_PROXY' -Pattern $script:ProxyPattern
        NoProxy  = Resolve-Setting -Name 'NoProxy' -Value $NoProxy -EnvName 'VENDING_NO_PROXY' -Pattern $script:NoProxyPattern
    }
    if (-not $settings.Proxy) {
        # The usual environment, as curl and the agent read it.
        foreach ($name in @('https_proxy', 'HTTPS_PROXY')) {
            $value = [Environment]::GetEnvironmentVariable($name)
            if ($value -and $value -match $script:ProxyPattern) {
                $settings.Proxy = $value
                break
            }
        }
    }
    if (-not $settings.NoProxy) {
        $value = [Environment]::GetEnvironmentVariable('no_proxy')
        if ($value -and $value -match $script:NoProxyPattern) {
            $settings.NoProxy = $value
        }
    }
    $maxWaitSeconds = Resolve-SecondsSetting -Name 'MaxWait' -Value $MaxWait -EnvName 'VENDING_MAX_WAIT' -Minimum 1 -Maximum 86400
    $onlineWaitSeconds = Resolve-SecondsSetting -Name 'OnlineWait' -Value $OnlineWait -EnvName 'VENDING_ONLINE_WAIT' -Minimum 0 -Maximum 3600
    $isForce = $Force.IsPresent -or (Test-Truthy -Value $env:VENDING_FORCE)
    $isDryRun = $DryRun.IsPresent -or (Test-Truthy -Value $env:VENDING_DRY_RUN)
    $isPrepareImage = $PrepareImage.IsPresent -or (Test-Truthy -Value $env:VENDING_PREPARE_IMAGE)
    $script:AllowUnverifiedRun = $AllowUnverified.IsPresent -or (Test-Truthy -Value $env:VENDING_ALLOW_UNVERIFIED)
    $isWhatIf = [bool]$WhatIfPreference
    $script:ProxyUrl = $settings.Proxy
    $script:NoProxyList = $settings.NoProxy

    if (-not $isDryRun -and -not $isWhatIf -and -not (Test-Administrator)) {
        Stop-Bootstrap -ExitCode $script:ExitPlatform -Message 'must run as Administrator (it installs and registers the SSM Agent); or use -DryRun'
    }
    if (-not $isDryRun) {
        Initialize-BootstrapLog
    }
    if ($isPrepareImage) {
        Invoke-PrepareImage -IsDryRun $isDryRun
        return
    }

    if (-not $settings.Url) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message '-Url (or VENDING_URL) is required; Get-Help .\bootstrap-windows.ps1 -Full'
    }
    if ($settings.Url.StartsWith('http://') -and -not (Test-LoopbackUrl -Address $settings.Url)) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message '-Url must be https:// (plain http is accepted only for loopback addresses)'
    }
    if ($settings.CaBundle -and -not (Test-Path -LiteralPath $settings.CaBundle -PathType Leaf)) {
        Stop-Bootstrap -ExitCode $script:ExitUsage -Message ('-CaBundle {0} is not a file' -f $settings.CaBundle)
    }
    if (-not $settings.Instance) {
        $settings.Instance = $env:COMPUTERNAME
        if (-not (Test-InstanceName -Name $settings.Instance)) {
            Write-BootstrapLog -Message ('warning: the computer name {0} is not a name the service accepts; asking without one (pass -Instance)' -f $settings.Instance)
            $settings.Instance = ''
        }
    }
    if ($settings.Instance -match '^(localhost(\.localdomain)?|ip-[0-9].*)\z') {
        Write-BootstrapLog -Message ('note: the service does not key a default name like {0} (clones share it): every retry takes a fresh slot; pass -Instance with a unique name' -f $settings.Instance)
    }
    if ($script:ProxyUrl) {
        # For every tool run from here (ssm-setup-cli's own downloads); loopback never proxied.
        $bypass = '127.0.0.1,localhost,::1,' + $script:ImdsNoProxy
        if ($script:NoProxyList) {
            $bypass = $bypass + ',' + $script:NoProxyList
        }
        foreach ($name in @('https_proxy', 'http_proxy')) {
            [Environment]::SetEnvironmentVariable($name, $script:ProxyUrl, 'Process')
        }
        [Environment]::SetEnvironmentVariable('no_proxy', $bypass, 'Process')
        Write-BootstrapLog -Message ('proxy: {0} (not for {1})' -f (ConvertTo-RedactedUrl -Address $script:ProxyUrl), $bypass)
    }
    if (Test-LoopbackUrl -Address $settings.Url) {
        # Windows PowerShell 5.1 would use the system proxy; loopback is never proxied.
        [System.Net.WebRequest]::DefaultWebProxy = New-Object System.Net.WebProxy
    }
    $bucketDirectory = Get-BucketDirectory
    $script:MachineId = Get-MachineIdDigest

    $fileId = Get-RegistrationFileId
    $agentId = Get-AgentIdentity
    $existing = ''
    $override = $isForce
    if ($fileId -ne $agentId) {
        # A failed registration (the agent blanks its identity before asking SSM and
        # leaves the file), a -register -clear or a file removed by hand: not registered.
        # The stale file goes and the machine registers afresh.
        Write-BootstrapLog -Message ("not registered: {0} names {1} but the agent's own identity is {2} (a failed registration or -register -clear blanks it); registering afresh" -f $script:RegistrationFile, $(if ($fileId) { $fileId } else { 'no managed instance' }), $(if ($agentId) { $agentId } else { 'empty' }))
        $override = $true
        if ($isDryRun) {
            Write-PlanStep -Step ('remove the stale {0} and {1}' -f $script:RegistrationFile, $script:IdentityFile)
        } else {
            foreach ($file in @($script:RegistrationFile, $script:IdentityFile)) {
                Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
            }
        }
    } else {
        $existing = $fileId
    }
    if ($existing) {
        $recorded = Get-RecordedIdentity
        if ($isForce) {
            Write-BootstrapLog -Message ('registered as {0}; -Force given, registering again' -f $existing)
        } elseif ($script:MachineId -and $recorded.machine -and $recorded.machine -ne $script:MachineId) {
            Write-BootstrapLog -Message ('registered as {0}, but on another machine (a clone or a re-image); clearing that registration and registering afresh' -f $existing)
            $override = $true
            if ($isDryRun) {
                Write-PlanStep -Step ('Stop-Service {0}; amazon-ssm-agent.exe -register -clear; remove {1}' -f $script:ServiceName, $script:RegistrationFile)
            } else {
                Clear-AgentRegistration
            }
        } else {
            if (-not $recorded.machine -and -not $isDryRun) {
                # Registered before this script kept a record (or by hand): adopt it.
                Save-RecordedIdentity -InstanceId $existing -Online '1'
            } elseif ($recorded.online -eq '0' -and -not $isDryRun) {
                Write-BootstrapLog -Message ('registered as {0}, but the agent was not seen online yet; starting it and waiting up to {1}s' -f $existing, $onlineWaitSeconds)
                $instanceId = Confirm-AgentOnline -OnlineWaitSeconds $onlineWaitSeconds
                Write-Output ('registered: {0}' -f $instanceId)
                return
            }
            Write-BootstrapLog -Message ('already registered as {0}; nothing to do (-Force re-registers)' -f $existing)
            if (-not $isDryRun -and -not (Test-AgentRunning)) {
                Write-BootstrapLog -Message ('{0} is not running; starting it' -f $script:ServiceName)
                try {
                    if ($script:ProxyUrl) {
                        Set-AgentProxy -ProxyAddress $script:ProxyUrl -Bypass $script:NoProxyList
                    }
                    Start-AgentService
                } catch {
                    Write-BootstrapLog -Message ('warning: could not start {0}: {1}' -f $script:ServiceName, $_.Exception.Message)
                }
            }
            Write-Output ('already registered: {0}' -f $existing)
            return
        }
    }

    Set-Tls12
    if ($settings.CaBundle) {
        Set-CaBundleValidation -Path $settings.CaBundle
    }
    # The vend always names this server (-Force too) and sends X-Machine-Id: only such a
    # vend can be confirmed afterwards (POST /registrations).
    $uri = Get-ActivationUri -BaseUrl $settings.Url -PoolName $settings.Pool -InstanceName $settings.Instance
    $reportUri = Get-RegistrationsUri -BaseUrl $settings.Url -PoolName $settings.Pool

    if (-not $isDryRun -and -not $PSCmdlet.ShouldProcess($uri, 'Fetch an activation (uses one registration slot)')) {
        Write-Output 'what-if: nothing was fetched or changed'
        return
    }

    # Tracing (Set-PSDebug -Trace) would print the code with the statements that hold it.
    Set-PSDebug -Trace 0
    # A refusal the service can heal is reported and the vend asked for once more
    # (Stop-FailedRegistration sets $script:Refused the first time); a second one is exit 5.
    $vends = 0
    do {
        if ($script:Refused) {
            Send-RefusalReport -Uri $reportUri -ActivationId $activationId -Refusal $script:Refused -ApiGatewayId $settings.ApiId
            $script:Refused = ''
        }
        $vends++
        $response = Get-VendedActivation -Uri $uri -ApiGatewayId $settings.ApiId -PoolName $settings.Pool -MaxWaitSeconds $maxWaitSeconds
        if (-not (Test-ActivationResponse -Response $response)) {
            $response = $null
            Stop-Bootstrap -ExitCode $script:ExitFetch -Message 'malformed response from the service (not an activation JSON object with ActivationId and ActivationCode)'
        }
        $script:ActivationCode = [string]$response.ActivationCode
        $activationId = [string]$response.ActivationId
        $activationRegion = Get-OptionalProperty -InputObject $response -Name 'Region'
        $expires = Get-OptionalProperty -InputObject $response -Name 'ExpirationDate'
        $activationPool = Get-OptionalProperty -InputObject $response -Name 'Pool'
        $response = $null
        # Logged only when they look as they must (as the Linux script checks them).
        if ($activationRegion -cnotmatch '^[a-z0-9-]{0,32}\z') {
            $activationRegion = ''
        }
        if ($expires -cnotmatch '^[0-9A-Za-z:.+-]{0,40}\z') {
            $expires = ''
        }
        if ($activationPool -cnotmatch '^[A-Za-z0-9_-]{0,64}\z') {
            $activationPool = ''
        }
        Write-BootstrapLog -Message ('got activation {0} (pool {1}, region {2}, expires {3}); code {4}' -f $activationId, $activationPool, $activationRegion, $expires, $script:Mask)

        $regionName = $settings.Region
        if (-not $regionName) {
            $regionName = $activationRegion
        }
        if (-not (Test-RegionName -Name $regionName)) {
            Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('no valid region (service returned "{0}"); pass -Region' -f $activationRegion)
        }
        $baseUrl = Get-DownloadBase -RegionName $regionName
        $overrideFlag = ''
        if ($override) {
            $overrideFlag = ' -override'
        }
        $agentInstalled = Test-Path -LiteralPath $script:AgentExe -PathType Leaf

        if ($isDryRun) {
            Write-PlanStep -Step ('activation {0} for instance {1} (pool {2}, region {3}, expires {4}); code {5}' -f $activationId, $settings.Instance, $activationPool, $regionName, $expires, $script:Mask)
            if ($agentInstalled) {
                Write-PlanStep -Step ('the agent is installed ({0}): run amazon-ssm-agent.exe -register -code={1} -id={2} -region={3} -y' -f $script:AgentExe, $script:Mask, $activationId, $regionName)
            } else {
                Write-PlanStep -Step ('download {0}/latest/{1}/ssm-setup-cli.exe and require a valid Amazon Authenticode signature' -f $baseUrl, $bucketDirectory)
                Write-PlanStep -Step ('run: ssm-setup-cli.exe -register -activation-code={0} -activation-id={1} -region={2}{3}' -f $script:Mask, $activationId, $regionName, $overrideFlag)
                Write-PlanStep -Step ('if ssm-setup-cli.exe is unavailable: AmazonSSMAgentSetup.exe /q CODE={0} ID={1} REGION={2} from {3}/latest/{4}/ (signature checked)' -f $script:Mask, $activationId, $regionName, $baseUrl, $bucketDirectory)
            }
            if ($script:ProxyUrl) {
                Write-PlanStep -Step ('set {0}\Environment: https_proxy, http_proxy={1}, no_proxy={2}' -f $script:ServiceKey, (ConvertTo-RedactedUrl -Address $script:ProxyUrl), ($script:ImdsNoProxy + $(if ($script:NoProxyList) { ',' + $script:NoProxyList } else { '' })))
            }
            Write-PlanStep -Step ('Set-Service {0} -StartupType Automatic; Restart-Service {0}' -f $script:ServiceName)
            Write-PlanStep -Step ("wait up to {0}s until the agent's own identity and {1} name the same managed instance (mi-...), {2} is running and {3} says 'Credentials ready' since this start" -f $onlineWaitSeconds, $script:RegistrationFile, $script:ServiceName, $script:AgentLog)
            Write-PlanStep -Step ('record the machine id digest in {0}' -f $script:IdentityFile)
            Clear-Secret
            Write-Output 'dry run complete: nothing was changed'
            return
        }

        $via = 'installed agent'
        if ($agentInstalled) {
            # Register the installed agent directly rather than have ssm-setup-cli reinstall it.
            Write-BootstrapLog -Message ('the agent is installed ({0}); registering it directly' -f $script:AgentExe)
            $exitCode = Register-WithAgent -ActivationId $activationId -RegionName $regionName
            if ($exitCode -ne 0) {
                Stop-FailedRegistration -ExitCode $exitCode -What 'amazon-ssm-agent.exe -register' -ActivationId $activationId
            }
        } else {
            $work = New-WorkDirectory
            $setupCli = Join-Path $work 'ssm-setup-cli.exe'
            $source = '{0}/latest/{1}/ssm-setup-cli.exe' -f $baseUrl, $bucketDirectory
            $via = 'ssm-setup-cli'
            Write-BootstrapLog -Message ('downloading {0}' -f $source)
            $exitCode = -1
            if (Save-Download -Source $source -Destination $setupCli -MaxWaitSeconds $maxWaitSeconds) {
                $exitCode = Register-WithSetupCli -SetupCli $setupCli -ActivationId $activationId -RegionName $regionName -Override:$override
                if ($exitCode -ne 0 -and (Test-Path -LiteralPath $script:AgentExe -PathType Leaf)) {
                    Stop-FailedRegistration -ExitCode $exitCode -What 'ssm-setup-cli' -ActivationId $activationId
                }
            }
            if ($exitCode -ne 0 -and -not $script:Refused) {
                Write-BootstrapLog -Message 'ssm-setup-cli is unavailable or failed before installing the agent; falling back to the agent installer'
                $via = 'AmazonSSMAgentSetup.exe'
                $exitCode = Install-AgentPackage -BaseUrl $baseUrl -BucketDirectory $bucketDirectory -ActivationId $activationId -RegionName $regionName -MaxWaitSeconds $maxWaitSeconds
                if ($exitCode -ne 0) {
                    if (-not (Test-Path -LiteralPath $script:AgentExe -PathType Leaf)) {
                        Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('the agent installer failed (exit {0})' -f $exitCode)
                    }
                    Stop-FailedRegistration -ExitCode $exitCode -What 'AmazonSSMAgentSetup.exe' -ActivationId $activationId
                }
            }
        }
    } while ($script:Refused -and $vends -lt 2)
    Clear-Secret

    # Reported once registered, before the wait: a warning at worst.
    $registered = Get-RegisteredInstanceId
    if ($registered) {
        Confirm-Registration -Uri $reportUri -InstanceId $registered -ActivationId $activationId -InstanceName $settings.Instance -ApiGatewayId $settings.ApiId
    }
    $instanceId = Confirm-AgentOnline -OnlineWaitSeconds $onlineWaitSeconds
    Remove-WorkDirectory
    Write-BootstrapLog -Message ('registered as {0} in {1} via {2} (activation {3}); {4} is automatic, running and connected' -f $instanceId, $regionName, $via, $activationId, $script:ServiceName)
    Write-Output ('registered: {0}' -f $instanceId)
}

$script:BoundParameters = $PSBoundParameters
$exitWith = 1
try {
    # Stop-Bootstrap exits with its own code; getting here means success.
    Invoke-Bootstrap
    $exitWith = $script:ExitOk
} catch {
    Write-BootstrapLog -Message ('ERROR: unexpected failure: {0}' -f (ConvertTo-MaskedText -Text $_.Exception.Message))
    $exitWith = 1
} finally {
    Clear-Secret
    Remove-WorkDirectory
}
exit $exitWith
