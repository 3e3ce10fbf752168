<#
.SYNOPSIS
Registers this Windows server with AWS Systems Manager using a hybrid activation
vended by the activation-vending service.

.DESCRIPTION
Fetches an activation (ID, code, region) from the activation-vending service with
Invoke-RestMethod, retrying with exponential backoff and jitter and honouring
Retry-After on 503/429, for at most -MaxWait seconds. Then downloads ssm-setup-cli.exe
from the regional AWS download location, checks its Authenticode signature, and lets
it install the SSM Agent and register this server; the regional agent installer
(AmazonSSMAgentSetup.exe) is the fallback. Finally sets the AmazonSSMAgent service to
start automatically, starts it and checks that the agent reports a registration.

Idempotent: a server that is already registered exits 0 without fetching a code
unless -Force is given.

The activation code is never written to the console, a stream, the transcript or a
file: it is passed to the AWS tool through System.Diagnostics.Process (not a cmdlet,
so module logging does not record it), and the tool's output is masked. Like the
Linux script, the code is visible in the tool's command line while it runs, because
ssm-setup-cli and the agent accept it only as an argument.

Works in Windows PowerShell 5.1 and PowerShell 7. This script was checked by parsing
(tree-sitter-powershell) and review only: PowerShell cannot run where it was written.

Every parameter has an environment variable twin (VENDING_URL, VENDING_POOL,
VENDING_INSTANCE, VENDING_REGION, VENDING_API_ID, VENDING_CA_BUNDLE, VENDING_MAX_WAIT,
VENDING_FORCE=1, VENDING_DRY_RUN=1); a parameter given on the command line wins.

.PARAMETER Url
Base URL of the activation-vending service (required): https://, or http:// to a
loopback address for local tests. With a VPC endpoint's own DNS name
(https://vpce-....execute-api.REGION.vpce.amazonaws.com/STAGE) also pass -ApiId.

.PARAMETER Pool
Activation pool to draw from (default: the service's "default" pool).

.PARAMETER Instance
Name this server registers under; retries reuse the same activation (default: the
computer name).

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
Gives up fetching an activation after this many seconds (default 120).

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

.NOTES
Exit codes (the same as bootstrap-linux.sh):
  0  registered (or already registered and -Force not given; or dry run done)
  1  unexpected internal error
  2  usage error (missing -Url, invalid value)
  3  fetch failed (service unreachable, gave up after -MaxWait, HTTP error, malformed response)
  4  install failed (download, signature check, agent installer)
  5  registration failed (SSM refused the activation, agent not registered afterwards,
     service not running)
  6  unsupported platform (architecture) or not run as Administrator
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter()]
    [ValidatePattern('^https?://[^\s?#]+$')]
    [string]$Url,

    [Parameter()]
    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$')]
    [string]$Pool,

    [Parameter()]
    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$')]
    [string]$Instance,

    [Parameter()]
    [ValidatePattern('^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$')]
    [string]$Region,

    [Parameter()]
    [ValidatePattern('^[a-z0-9]{1,32}$')]
    [string]$ApiId,

    [Parameter()]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string]$CaBundle,

    [Parameter()]
    [ValidateRange(1, 86400)]
    [int]$MaxWait = 120,

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
$script:AgentExe = Join-Path $env:ProgramFiles 'Amazon\SSM\amazon-ssm-agent.exe'
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
    Write-Information -MessageData ('{0} bootstrap-windows: {1}' -f $stamp, $Message) -InformationAction Continue
}

function Write-PlanStep {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Step
    )
    Write-Information -MessageData ('[dry-run] {0}' -f $Step) -InformationAction Continue
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
        return $Text.Replace($script:ActivationCode, $script:Mask)
    }
    return $Text
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

function Test-RegionName {
    [CmdletBinding()]
    param(
        [Parameter()]
        [AllowEmptyString()]
        [string]$Name
    )
    return ($Name -cmatch '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$')
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
            return 'windows_arm64'
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

function Get-RegisteredInstanceId {
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
    if ($null -ne $property -and ([string]$property.Value) -match '^mi-[0-9a-fA-F]+$') {
        return [string]$property.Value
    }
    return ''
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
    $result = @{ Status = 0; RetryAfter = -1; Message = $ErrorRecord.Exception.Message }
    $exception = $ErrorRecord.Exception
    $response = $null
    if ($null -ne $exception.PSObject.Properties['Response']) {
        $response = $exception.Response
    }
    if ($null -eq $response) {
        return $result
    }
    $result.Status = [int]$response.StatusCode
    $retryAfter = $null
    if ($response -is [System.Net.HttpWebResponse]) {
        $retryAfter = $response.Headers['Retry-After']
    } elseif ($null -ne $response.PSObject.Properties['Headers'] -and $null -ne $response.Headers.RetryAfter) {
        if ($null -ne $response.Headers.RetryAfter.Delta) {
            $retryAfter = [string][int]$response.Headers.RetryAfter.Delta.TotalSeconds
        }
    }
    if ($retryAfter -match '^\s*[0-9]{1,5}\s*$') {
        $result.RetryAfter = [int]$retryAfter
    }
    return $result
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

        [Parameter(Mandatory = $true)]
        [int]$MaxWaitSeconds
    )
    $headers = @{ 'Accept' = 'application/json' }
    if ($ApiGatewayId) {
        $headers['x-apigw-api-id'] = $ApiGatewayId
    }
    $random = New-Object System.Random
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $backoffMs = 1000
    $attempt = 0
    $lastError = 'none'
    Write-BootstrapLog -Message ('fetching activation: GET {0}' -f $Uri)
    while ($true) {
        $remaining = $MaxWaitSeconds - [int]$clock.Elapsed.TotalSeconds
        if ($remaining -le 0) {
            Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('gave up fetching an activation after {0}s and {1} attempt(s) (-MaxWait {0}); last error: {2}' -f $MaxWaitSeconds, $attempt, $lastError)
        }
        $attempt++
        $perTry = [Math]::Min($remaining, 30)
        $retryAfter = -1
        try {
            $response = Invoke-RestMethod -Uri $Uri -Method Get -Headers $headers -TimeoutSec $perTry -UseBasicParsing
            return $response
        } catch {
            $failure = Get-HttpFailure -ErrorRecord $_
            if ($failure.Status -eq 0) {
                $lastError = $failure.Message
            } else {
                $lastError = 'HTTP {0}' -f $failure.Status
                switch ($failure.Status) {
                    { $_ -eq 429 -or $_ -eq 503 } {
                        $retryAfter = $failure.RetryAfter
                        $lastError = '{0} (Retry-After: {1})' -f $lastError, $retryAfter
                    }
                    { $_ -eq 500 -or $_ -eq 502 -or $_ -eq 504 } {
                    }
                    400 {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message 'the service rejected the request (HTTP 400): check -Pool and -Instance'
                    }
                    { $_ -eq 401 -or $_ -eq 403 } {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('access denied (HTTP {0}): a private API is reachable only through its VPC endpoint; with the endpoint''s own DNS name pass -ApiId' -f $failure.Status)
                    }
                    404 {
                        Stop-Bootstrap -ExitCode $script:ExitFetch -Message 'not found (HTTP 404): unknown pool or wrong -Url'
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
    if ($Response.ActivationId -notmatch '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$') {
        return $false
    }
    return ($Response.ActivationCode -match '^[A-Za-z0-9+/=_-]{1,256}$')
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
    # Three tries; the file must carry a valid Authenticode signature by Amazon.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$Source,

        [Parameter(Mandatory = $true)]
        [string]$Destination
    )
    for ($try = 1; $try -le 3; $try++) {
        try {
            Invoke-WebRequest -Uri $Source -OutFile $Destination -UseBasicParsing -TimeoutSec 600
            $signature = Get-AuthenticodeSignature -FilePath $Destination
            if ($signature.Status -ne 'Valid' -or $null -eq $signature.SignerCertificate -or $signature.SignerCertificate.Subject -notmatch 'Amazon') {
                Remove-Item -LiteralPath $Destination -Force -ErrorAction SilentlyContinue
                Write-BootstrapLog -Message ('{0}: signature is {1}, not a valid Amazon signature' -f $Source, $signature.Status)
                return $false
            }
            return $true
        } catch {
            Write-BootstrapLog -Message ('download of {0} failed (try {1} of 3): {2}' -f $Source, $try, $_.Exception.Message)
            Start-Sleep -Seconds $try
        }
    }
    return $false
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
        return 124
    }
    $process.WaitForExit()
    foreach ($text in @($stdout.Result, $stderr.Result)) {
        foreach ($line in ($text -split "`r?`n")) {
            if ($line.Trim()) {
                Write-Information -MessageData ('    | ' + (ConvertTo-MaskedText -Text $line)) -InformationAction Continue
            }
        }
    }
    return $process.ExitCode
}

function Register-WithSetupCli {
    # ssm-setup-cli installs the agent (verifying its signature: we never pass
    # -skip-signature-validation), registers and starts it.
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

function Install-AgentPackage {
    # Fallback: the regional agent installer. With CODE/ID/REGION it registers during
    # install; an agent that is already installed is registered with -register -y.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string]$BaseUrl,

        [Parameter(Mandatory = $true)]
        [string]$BucketDirectory,

        [Parameter(Mandatory = $true)]
        [string]$ActivationId,

        [Parameter(Mandatory = $true)]
        [string]$RegionName
    )
    if (Test-Path -LiteralPath $script:AgentExe -PathType Leaf) {
        Write-BootstrapLog -Message 'fallback: the agent is installed; registering it directly'
        Stop-Service -Name $script:ServiceName -Force -ErrorAction SilentlyContinue
        $tail = ' -id={0} -region={1} -y' -f $ActivationId, $RegionName
        # -y answers the "already registered, override?" prompt, so nothing waits on stdin.
        $arguments = '-register -code=' + $script:ActivationCode + $tail
        $display = 'amazon-ssm-agent.exe -register -code=' + $script:Mask + $tail
        return (Invoke-MaskedProcess -FilePath $script:AgentExe -Arguments $arguments -Display $display)
    }
    $source = '{0}/latest/{1}/AmazonSSMAgentSetup.exe' -f $BaseUrl, $BucketDirectory
    $installer = Join-Path $script:WorkDir 'AmazonSSMAgentSetup.exe'
    Write-BootstrapLog -Message ('fallback: installing the agent from {0}' -f $source)
    if (-not (Save-Download -Source $source -Destination $installer)) {
        Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('could not download a validly signed {0}' -f $source)
    }
    # The installer log stays in the working directory, which is deleted at the end.
    $log = Join-Path $script:WorkDir 'install.log'
    $tail = ' ID={0} REGION={1}' -f $ActivationId, $RegionName
    $arguments = '/q /log "' + $log + '" CODE=' + $script:ActivationCode + $tail
    $display = 'AmazonSSMAgentSetup.exe /q /log install.log CODE=' + $script:Mask + $tail
    return (Invoke-MaskedProcess -FilePath $installer -Arguments $arguments -Display $display)
}

# --------------------------------------------------------------------- main

function Invoke-Bootstrap {
    [CmdletBinding(SupportsShouldProcess)]
    param()

    $settings = @{
        Url      = Resolve-Setting -Name 'Url' -Value $Url -EnvName 'VENDING_URL' -Pattern '^https?://[^\s?#]+$'
        Pool     = Resolve-Setting -Name 'Pool' -Value $Pool -EnvName 'VENDING_POOL' -Pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
        Instance = Resolve-Setting -Name 'Instance' -Value $Instance -EnvName 'VENDING_INSTANCE' -Pattern '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'
        Region   = Resolve-Setting -Name 'Region' -Value $Region -EnvName 'VENDING_REGION' -Pattern '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$'
        ApiId    = Resolve-Setting -Name 'ApiId' -Value $ApiId -EnvName 'VENDING_API_ID' -Pattern '^[a-z0-9]{1,32}$'
        CaBundle = Resolve-Setting -Name 'CaBundle' -Value $CaBundle -EnvName 'VENDING_CA_BUNDLE'
    }
    $maxWaitSeconds = $MaxWait
    if (-not $script:BoundParameters.ContainsKey('MaxWait') -and $env:VENDING_MAX_WAIT) {
        if ($env:VENDING_MAX_WAIT -notmatch '^[0-9]{1,5}$' -or [int]$env:VENDING_MAX_WAIT -lt 1) {
            Stop-Bootstrap -ExitCode $script:ExitUsage -Message ('VENDING_MAX_WAIT must be a whole number of seconds: {0}' -f $env:VENDING_MAX_WAIT)
        }
        $maxWaitSeconds = [int]$env:VENDING_MAX_WAIT
    }
    $isForce = $Force.IsPresent -or (Test-Truthy -Value $env:VENDING_FORCE)
    $isDryRun = $DryRun.IsPresent -or (Test-Truthy -Value $env:VENDING_DRY_RUN)
    $isWhatIf = [bool]$WhatIfPreference

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
    }

    if (-not $isDryRun -and -not $isWhatIf -and -not (Test-Administrator)) {
        Stop-Bootstrap -ExitCode $script:ExitPlatform -Message 'must run as Administrator (it installs and registers the SSM Agent); or use -DryRun'
    }
    $bucketDirectory = Get-BucketDirectory

    $existing = Get-RegisteredInstanceId
    $freshSlot = $false
    if ($existing) {
        if (-not $isForce) {
            Write-BootstrapLog -Message ('already registered as {0}; nothing to do (-Force re-registers)' -f $existing)
            if (-not $isDryRun -and -not (Test-AgentRunning)) {
                Write-BootstrapLog -Message ('{0} is not running; starting it' -f $script:ServiceName)
                try {
                    Start-AgentService
                } catch {
                    Write-BootstrapLog -Message ('warning: could not start {0}: {1}' -f $script:ServiceName, $_.Exception.Message)
                }
            }
            Write-Output ('already registered: {0}' -f $existing)
            return
        }
        # The service would hand back the activation whose registration this server
        # already used; ask for a fresh slot instead (no instance name).
        Write-BootstrapLog -Message ('registered as {0}; -Force given, registering again with a fresh activation slot' -f $existing)
        $freshSlot = $true
    }

    Set-Tls12
    if ($settings.CaBundle) {
        Set-CaBundleValidation -Path $settings.CaBundle
    }
    $instanceName = $settings.Instance
    if ($freshSlot) {
        $instanceName = ''
    }
    $uri = Get-ActivationUri -BaseUrl $settings.Url -PoolName $settings.Pool -InstanceName $instanceName

    if (-not $isDryRun -and -not $PSCmdlet.ShouldProcess($uri, 'Fetch an activation (uses one registration slot)')) {
        Write-Output 'what-if: nothing was fetched or changed'
        return
    }

    # Tracing (Set-PSDebug -Trace) would print the code with the statements that hold it.
    Set-PSDebug -Trace 0
    $response = Get-VendedActivation -Uri $uri -ApiGatewayId $settings.ApiId -MaxWaitSeconds $maxWaitSeconds
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
    Write-BootstrapLog -Message ('got activation {0} (pool {1}, region {2}, expires {3}); code {4}' -f $activationId, $activationPool, $activationRegion, $expires, $script:Mask)

    $regionName = $settings.Region
    if (-not $regionName) {
        $regionName = $activationRegion
    }
    if (-not (Test-RegionName -Name $regionName)) {
        Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('no valid region (service returned "{0}"); pass -Region' -f $activationRegion)
    }
    $baseUrl = Get-DownloadBase -RegionName $regionName
    $override = ''
    if ($isForce) {
        $override = ' -override'
    }

    if ($isDryRun) {
        Write-PlanStep -Step ('activation {0} for instance {1} (pool {2}, region {3}, expires {4}); code {5}' -f $activationId, $settings.Instance, $activationPool, $regionName, $expires, $script:Mask)
        Write-PlanStep -Step ('download {0}/latest/{1}/ssm-setup-cli.exe and require a valid Amazon Authenticode signature' -f $baseUrl, $bucketDirectory)
        Write-PlanStep -Step ('run: ssm-setup-cli.exe -register -activation-code={0} -activation-id={1} -region={2}{3}' -f $script:Mask, $activationId, $regionName, $override)
        Write-PlanStep -Step ('if ssm-setup-cli.exe is unavailable: AmazonSSMAgentSetup.exe /q CODE={0} ID={1} REGION={2} from {3}/latest/{4}/' -f $script:Mask, $activationId, $regionName, $baseUrl, $bucketDirectory)
        Write-PlanStep -Step ('Set-Service {0} -StartupType Automatic; Restart-Service {0}' -f $script:ServiceName)
        Write-PlanStep -Step ('check that {0} names a managed instance (mi-...) and that {1} is running' -f $script:RegistrationFile, $script:ServiceName)
        Clear-Secret
        Write-Output 'dry run complete: nothing was changed'
        return
    }

    $work = New-WorkDirectory
    $setupCli = Join-Path $work 'ssm-setup-cli.exe'
    $source = '{0}/latest/{1}/ssm-setup-cli.exe' -f $baseUrl, $bucketDirectory
    $via = 'ssm-setup-cli'
    Write-BootstrapLog -Message ('downloading {0}' -f $source)
    $exitCode = -1
    if (Save-Download -Source $source -Destination $setupCli) {
        $exitCode = Register-WithSetupCli -SetupCli $setupCli -ActivationId $activationId -RegionName $regionName -Override:$isForce
        if ($exitCode -ne 0 -and (Test-Path -LiteralPath $script:AgentExe -PathType Leaf)) {
            Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('ssm-setup-cli could not register this server with activation {0} (exit {1}; see its output above)' -f $activationId, $exitCode)
        }
    }
    if ($exitCode -ne 0) {
        Write-BootstrapLog -Message 'ssm-setup-cli is unavailable or failed before installing the agent; falling back to the agent installer'
        $via = 'AmazonSSMAgentSetup.exe'
        $exitCode = Install-AgentPackage -BaseUrl $baseUrl -BucketDirectory $bucketDirectory -ActivationId $activationId -RegionName $regionName
        if ($exitCode -ne 0) {
            if (-not (Test-Path -LiteralPath $script:AgentExe -PathType Leaf)) {
                Stop-Bootstrap -ExitCode $script:ExitInstall -Message ('the agent installer failed (exit {0})' -f $exitCode)
            }
            Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('registration with activation {0} failed (exit {1}; see the output above)' -f $activationId, $exitCode)
        }
    }
    Clear-Secret

    try {
        Start-AgentService
    } catch {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('could not start {0}: {1}' -f $script:ServiceName, $_.Exception.Message)
    }
    $instanceId = ''
    for ($i = 0; $i -lt 10 -and -not $instanceId; $i++) {
        $instanceId = Get-RegisteredInstanceId
        if (-not $instanceId) {
            Start-Sleep -Seconds 1
        }
    }
    if (-not $instanceId) {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('the agent does not report a registration ({0} has no managed instance ID)' -f $script:RegistrationFile)
    }
    for ($i = 0; $i -lt 10 -and -not (Test-AgentRunning); $i++) {
        Start-Sleep -Seconds 1
    }
    if (-not (Test-AgentRunning)) {
        Stop-Bootstrap -ExitCode $script:ExitRegister -Message ('registered as {0} but {1} is not running' -f $instanceId, $script:ServiceName)
    }
    Remove-WorkDirectory
    Write-BootstrapLog -Message ('registered as {0} in {1} via {2} (activation {3}); {4} is automatic and running' -f $instanceId, $regionName, $via, $activationId, $script:ServiceName)
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
