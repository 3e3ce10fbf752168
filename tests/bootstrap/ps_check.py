"""Static checks of PowerShell scripts with tree-sitter-powershell (PowerShell
itself cannot run on our machines).

  ps_check.py parse FILE...   syntax: fails on any ERROR or MISSING node, printing
                              line:column and the offending text
  ps_check.py lint FILE...    review rules for the boot script:
                                - every function is Verb-Noun with an approved verb
                                - no command that writes to the console, a stream,
                                  a file or the transcript takes an argument that
                                  mentions the activation code's variable
                                - Windows PowerShell 5.1 syntax and parameters only
                                  (no && / || chains, no 6+-only cmdlet parameters;
                                  ?? and ?: already fail the 5.1-era grammar)
                                - $ErrorActionPreference = 'Stop', TLS 1.2,
                                  [CmdletBinding(SupportsShouldProcess)] and
                                  comment-based help with .SYNOPSIS and a
                                  .PARAMETER for every script parameter
  ps_check.py contract FILE...
                              what issues 8 and 9 ask of the Windows boot script,
                              each a rule that fails on the script before them:
                                machine id, name rules, 400 final, proxy in the
                                agent service's registry Environment, success means
                                online, clones and -PrepareImage, verified installs,
                                installed agent first, ProgramW6432, our own log
                                file, failed 5.1 responses closed, -Instance help,
                                every request to the service made from one splat
                                (Get-ServiceRequestArgument: headers, proxy, body);
                                issue 10: a pool's verdict (404 PoolNotFound, 403
                                PoolDisabled/Forbidden, 500 PoolMisconfigured) is
                                final and names the pool and the reason;
                                issue 18.8: checks anchored with \z (not $, which
                                accepts a trailing newline), Pool and ExpirationDate
                                validated before they are logged;
                                issue 19: registered = the agent's identity and the
                                registration file agree, a failed registration removes
                                the stale file and says "refused: <Code>", online from
                                the core's log and hibernation from the worker's, a
                                -register timeout, the exact signer CN, 3010, ARM64,
                                proxy credentials masked;
                                issue 22: the registration is reported (POST
                                /registrations, X-Machine-Id, the pool, a body from
                                checked values through ConvertTo-Json, never the code),
                                a failed report is a bounded warning, -Force names the
                                instance, a refusal the service can heal is reported and
                                the vend asked for once more
  ps_check.py patterns FILE   prints the -Instance and -Pool ValidatePatterns as JSON
                              (tests run them against the service's name rules)

Exit status: 0 clean, 1 findings, 2 usage or unreadable file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterator

import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

# Get-Verb on PowerShell 7.4 (the approved list; 5.1 has the same set minus Build/Deploy additions).
APPROVED_VERBS = set(
    """Add Clear Close Copy Enter Exit Find Format Get Hide Join Lock Move New Open Optimize Pop
    Push Redo Remove Rename Reset Resize Search Select Set Show Skip Split Step Switch Undo Unlock
    Watch Connect Disconnect Read Receive Send Write Backup Checkpoint Compare Compress Convert
    ConvertFrom ConvertTo Dismount Edit Expand Export Group Import Initialize Limit Merge Mount Out
    Publish Restore Save Sync Unpublish Update Debug Measure Ping Repair Resolve Test Trace Approve
    Assert Build Complete Confirm Deny Deploy Disable Enable Install Invoke Register Request
    Restart Resume Start Stop Submit Suspend Uninstall Unregister Wait Block Grant Protect Revoke
    Unblock Unprotect Use""".split()
)

# Commands whose arguments end up on the console, in a stream, a log or the transcript.
WRITERS = {
    "write-host", "write-output", "write-verbose", "write-information", "write-warning",
    "write-debug", "write-error", "write-progress", "out-host", "out-default", "out-file",
    "out-string", "add-content", "set-content", "tee-object", "start-transcript", "write-bootstraplog",
    "start-process", "write-eventlog", "throw",
}

# Names the script may use for the secret.
SECRET_NAMES = re.compile(r"\$(script:)?(activationcode|code|secret)\b", re.IGNORECASE)

# Cmdlet parameters that exist only in PowerShell 6+.
PS7_ONLY_PARAMETERS = re.compile(
    r"-(AsHashtable|SkipHttpErrorCheck|ResponseHeadersVariable|StatusCodeVariable|SkipCertificateCheck|"
    r"SslProtocol|Parallel|ThrottleLimit|NoProxy|Resume|SkipHeaderValidation)\b",
    re.IGNORECASE,
)

LANGUAGE = Language(tree_sitter_powershell.language())


def parse(path: Path) -> Node:
    parser = Parser(LANGUAGE)
    return parser.parse(path.read_bytes()).root_node


def walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def text(node: Node) -> str:
    return node.text.decode("utf-8", "replace") if node.text is not None else ""


def syntax_errors(path: Path) -> list[str]:
    findings = []
    for node in walk(parse(path)):
        if node.is_error or node.is_missing:
            line, col = node.start_point
            kind = "missing" if node.is_missing else "syntax error"
            snippet = text(node).splitlines()[0][:60] if text(node) else node.type
            findings.append(f"{path}:{line + 1}:{col + 1}: {kind} near {snippet!r}")
    return findings


def lint(path: Path) -> list[str]:
    findings: list[str] = []
    source = path.read_text(encoding="utf-8")
    root = parse(path)

    for node in walk(root):
        if node.type == "function_statement":
            name_node = next((c for c in node.children if c.type == "function_name"), None)
            name = text(name_node) if name_node is not None else "?"
            verb = name.split("-", 1)[0] if "-" in name else ""
            if verb not in APPROVED_VERBS:
                line = node.start_point[0] + 1
                findings.append(f"{path}:{line}: function {name} does not use an approved verb (Verb-Noun)")
        if node.type == "pipeline_chain_tail":
            findings.append(f"{path}:{node.start_point[0] + 1}: && / || pipeline chains need PowerShell 7")
        if node.type == "command":
            for match in PS7_ONLY_PARAMETERS.finditer(text(node)):
                findings.append(f"{path}:{node.start_point[0] + 1}: -{match.group(1)} needs PowerShell 6+")
        if node.type == "command":
            name_node = node.child_by_field_name("command_name") or (node.children[0] if node.children else None)
            name = text(name_node).lower() if name_node is not None else ""
            if name in WRITERS:
                args = text(node)[len(text(name_node)):] if name_node is not None else text(node)
                if SECRET_NAMES.search(args):
                    line = node.start_point[0] + 1
                    findings.append(f"{path}:{line}: {name} is given the activation code: {text(node).strip()[:80]}")
        if node.type == "throw_statement" or (node.type == "flow_control_statement" and text(node).lower().startswith("throw")):
            if SECRET_NAMES.search(text(node)):
                findings.append(f"{path}:{node.start_point[0] + 1}: throw mentions the activation code")

    if not re.search(r"^\s*\$ErrorActionPreference\s*=\s*'Stop'", source, re.MULTILINE):
        findings.append(f"{path}: does not set $ErrorActionPreference = 'Stop'")
    if not re.search(r"SecurityProtocolType\]::Tls12", source):
        findings.append(f"{path}: does not force TLS 1.2 ([Net.SecurityProtocolType]::Tls12)")
    if not re.search(r"\[CmdletBinding\(SupportsShouldProcess\b", source):
        findings.append(f"{path}: lacks [CmdletBinding(SupportsShouldProcess)]")
    help_block = re.search(r"<#(.*?)#>", source, re.DOTALL)
    if help_block is None or ".SYNOPSIS" not in help_block.group(1):
        findings.append(f"{path}: lacks comment-based help with .SYNOPSIS")
    else:
        documented = {m.lower() for m in re.findall(r"^\s*\.PARAMETER\s+(\w+)", help_block.group(1), re.MULTILINE)}
        script_params = script_parameters(root)
        for name in script_params:
            if name.lower() not in documented:
                findings.append(f"{path}: parameter -{name} has no .PARAMETER help")
        if not script_params:
            findings.append(f"{path}: no script parameters found")
    return findings


def script_parameters(root: Node) -> list[str]:
    """Names in the script-level param() block (not those of functions)."""
    for node in walk(root):
        if node.type == "function_statement":
            continue
        if node.type == "param_block":
            inside_function = False
            parent = node.parent
            while parent is not None:
                if parent.type == "function_statement":
                    inside_function = True
                    break
                parent = parent.parent
            if inside_function:
                continue
            names = []
            for child in walk(node):
                if child.type == "script_parameter":
                    var = next((c for c in child.children if c.type == "variable"), None)
                    if var is not None:
                        names.append(text(var).lstrip("$"))
            return names
    return []


def functions(root: Node) -> dict[str, str]:
    """Function name -> its source text."""
    found = {}
    for node in walk(root):
        if node.type == "function_statement":
            name_node = next((c for c in node.children if c.type == "function_name"), None)
            if name_node is not None:
                found[text(name_node)] = text(node)
    return found


def param_patterns(source: str) -> dict[str, str]:
    """ValidatePattern of each script parameter (the first param block), unescaped."""
    block = source[source.index("[CmdletBinding(SupportsShouldProcess)]\nparam("):]
    block = block[: block.index("\n)\n")]
    patterns = {}
    for match in re.finditer(r"\[ValidatePattern\('((?:[^']|'')*)'\)\]\s*\[string\]\$(\w+)", block):
        patterns[match.group(2)] = match.group(1).replace("''", "'")
    return patterns


def script_constant(source: str, name: str) -> str | None:
    match = re.search(rf"^\$script:{name} = '((?:[^']|'')*)'$", source, re.MULTILINE)
    return match.group(1).replace("''", "'") if match else None


def contract(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    root = parse(path)
    fns = functions(root)
    findings: list[str] = []

    def need(condition: bool, what: str) -> None:
        if not condition:
            findings.append(f"{path}: {what}")

    def fn(name: str) -> str:
        return fns.get(name, "")

    # Issue 8: machine identity, the service's name rules, a 400 is final.
    need("'X-Machine-Id'" in source, "vend requests do not send X-Machine-Id")
    need("Win32_ComputerSystemProduct" in source and "MachineGuid" in source and "SHA256" in source,
         "the machine id is not the SHA-256 of Win32_ComputerSystemProduct.UUID, else MachineGuid")
    for node in walk(root):
        if node.type == "command":
            name_node = node.child_by_field_name("command_name") or (node.children[0] if node.children else None)
            name = text(name_node).lower() if name_node is not None else ""
            if name in WRITERS and re.search(r"\.UUID\b|\.MachineGuid\b|\$candidate\b", text(node), re.IGNORECASE):
                findings.append(f"{path}:{node.start_point[0] + 1}: the raw machine id is written out")
    patterns = param_patterns(source)
    need(patterns.get("Instance") == script_constant(source, "InstancePattern"),
         "-Instance's ValidatePattern and $script:InstancePattern (its environment twin's check) differ")
    need(patterns.get("Pool") == script_constant(source, "PoolPattern"),
         "-Pool's ValidatePattern and $script:PoolPattern differ")
    need(re.search(r"\b400 \{\s*Stop-Bootstrap", fn("Get-VendedActivation")) is not None, "an HTTP 400 is retried")

    # Issue 9.1: proxy for the fetch, the downloads and the agent service.
    need("HKLM:\\SYSTEM\\CurrentControlSet\\Services\\AmazonSSMAgent" in source and "-Name 'Environment'" in fn("Set-AgentProxy")
         and "-PropertyType MultiString" in fn("Set-AgentProxy") and "('no_proxy=' + $noProxy)" in fn("Set-AgentProxy")
         and "$script:ImdsNoProxy = '169.254.169.254'" in source,
         "the agent service does not get https_proxy/http_proxy/no_proxy=169.254.169.254 in its registry Environment value")
    # The requests to the service are made from Get-ServiceRequestArgument's splat, which
    # holds Get-ProxyArgument's.
    request = fn("Get-ServiceRequestArgument")
    need(re.search(r"\$proxyArguments = Get-ProxyArgument -Address \$Uri\s+return \(\$request \+ \$proxyArguments\)", request) is not None
         and "$request = Get-ServiceRequestArgument -Uri $Uri " in fn("Get-VendedActivation")
         and re.search(r"Invoke-RestMethod @request -TimeoutSec", fn("Get-VendedActivation")) is not None
         and re.search(r"\$proxyArguments = Get-ProxyArgument -Address", fn("Save-Download")) is not None
         and re.search(r"Invoke-WebRequest [^\n]*@proxyArguments", fn("Save-Download")) is not None,
         "the fetch and the downloads do not use -Proxy")
    for node in walk(root):
        if node.type == "command":
            name_node = node.child_by_field_name("command_name") or (node.children[0] if node.children else None)
            if name_node is not None and text(name_node).lower() == "invoke-restmethod" \
                    and not text(node).startswith("Invoke-RestMethod @request -TimeoutSec "):
                findings.append(f"{path}:{node.start_point[0] + 1}: a request to the service is not made from "
                                "Get-ServiceRequestArgument's splat (its headers, proxy and body)")
    need("Test-LoopbackUrl" in fn("Get-ProxyArgument"), "loopback addresses may be proxied")

    # Issue 9.2: success means online.
    need("-match 'Credentials ready'" in fn("Wait-AgentOnline") and "Entering SSM Agent hibernate.*$'" in fn("Wait-AgentOnline"),
         "the agent is not waited for until its log says it connected (or hibernates)")
    need("[int]$OnlineWait = 90" in source, "no -OnlineWait parameter defaulting to 90")
    for name, body in fns.items():
        for match in re.finditer(r"Write-Output \('registered: ", body):
            before = body[: match.start()]
            if "Confirm-AgentOnline" not in before and "Wait-AgentOnline" not in before:
                findings.append(f"{path}: {name} prints 'registered:' without having seen the agent online")

    # Issue 9.3: clones and re-images; -PrepareImage.
    need("-register -clear" in fn("Clear-AgentRegistration") and "IdentityFile" in fn("Clear-AgentRegistration"),
         "a registration is not cleared with -register -clear and our record")
    need(re.search(r"\$recorded\.machine -ne \$script:MachineId", fn("Invoke-Bootstrap")) is not None,
         "a registration made on another machine (a clone) is taken for this machine's")
    need("[switch]$PrepareImage" in source and "Clear-AgentRegistration" in fn("Invoke-PrepareImage"),
         "no -PrepareImage that clears the registration")

    # Issue 9.5: verified installs only.
    need("Get-AuthenticodeSignature" in fn("Assert-AmazonSignature")
         and "Stop-Bootstrap -ExitCode $script:ExitInstall" in fn("Assert-AmazonSignature")
         and "Assert-AmazonSignature" in fn("Save-Download"),
         "a download whose signature does not check out is skipped over instead of stopping with exit 4")
    need("[switch]$AllowUnverified" in source, "no -AllowUnverified")

    # Issue 9.6: an installed agent registers itself, before any ssm-setup-cli download.
    main_text = fn("Invoke-Bootstrap")
    need("Register-WithAgent" in main_text and main_text.find("Register-WithAgent") < main_text.find("ssm-setup-cli.exe' -f"),
         "an installed agent is not registered directly before downloading ssm-setup-cli")

    # Issue 9.7: Windows details.
    need("$env:ProgramW6432" in source, "the agent path does not use $env:ProgramW6432 (32-bit PowerShell)")
    for match in re.finditer(r"\$env:ProgramFiles\b", source):
        line = source[source.rfind("\n", 0, match.start()) + 1 : source.find("\n", match.start())]
        if "ProgramW6432" not in line:
            findings.append(f"{path}: $env:ProgramFiles used without $env:ProgramW6432 first: {line.strip()[:80]}")
    need("ActivationVending\\bootstrap.log" in source and "Add-BootstrapLogLine" in fn("Write-BootstrapLog"),
         "no log file of our own under %ProgramData%\\ActivationVending")
    need("Start-Transcript" not in source, "a transcript would record what the tools print")
    need(re.search(r"\$response\.(Close|Dispose)\(\)", fn("Get-HttpFailure")) is not None,
         "failed responses are not closed (Windows PowerShell 5.1 keeps the connection)")

    # Issue 10: a pool's own verdict is final, names the pool and the reason.
    verdicts = fn("Get-PoolVerdict")
    for verdict in ("404:PoolNotFound", "403:PoolDisabled", "403:Forbidden", "500:PoolMisconfigured"):
        need(f"'{verdict}'" in verdicts, f"{verdict} is not a final verdict about the pool (it would be retried or misreported)")
    need("-match '\"code\"" in fn("Get-HttpFailure") and "$result.Code = $Matches[1]" in fn("Get-HttpFailure"),
         "the error body's code is not read ({\"error\":{\"code\":...}})")
    fetch = fn("Get-VendedActivation")
    verdict_at = fetch.find("Get-PoolVerdict -Status $failure.Status -Code $failure.Code")
    need(verdict_at >= 0 and 0 <= fetch.find("Stop-Bootstrap -ExitCode $script:ExitFetch -Message ('pool ''{0}''", verdict_at)
         < fetch.find("switch ($failure.Status)", verdict_at),
         "a pool verdict does not stop with exit 3 before the retry switch")
    need(re.search(r"'pool ''\{0\}'' \{1\} \(HTTP [^']*; not retried' -f \$poolLabel, \$verdict\.Reason, \$failure\.Status, "
                   r"\$failure\.Code, \$detail", fetch) is not None
         and "$detail = $(if ($failure.Detail) { ': ' + $failure.Detail }" in fetch,
         "the pool verdict message does not name the pool, the reason and the service's message")
    need("-PoolName $settings.Pool" in fn("Invoke-Bootstrap"), "the fetch is not told the pool's name")

    # Issue 18.8: anchored checks end with \z; what the service returns is validated before it is logged.
    for match in re.finditer(r"'\^(?:[^']|'')*?\$'", source):
        if "(?m)" not in match.group(0):
            line = source.count("\n", 0, match.start()) + 1
            findings.append(f"{path}:{line}: a check anchored with $ accepts a trailing newline (use \\z): {match.group(0)[:60]}")
    main_text = fn("Invoke-Bootstrap")
    logged_at = main_text.find("'got activation {0}")
    for var in ("$activationPool", "$expires", "$activationRegion"):
        checked_at = main_text.find(f"if ({var} -cnotmatch '^")
        need(0 <= checked_at < logged_at, f"{var} from the service is logged without being validated")

    # Issue 19: registered means the agent's own identity and the registration file agree.
    need("Get-AgentIdentity" in fn("Get-RegisteredInstanceId") and "Get-RegistrationFileId" in fn("Get-RegisteredInstanceId"),
         "a registration file alone is taken for a registration (the agent's own identity is not asked)")
    need("get-instance-information" in fn("Get-AgentIdentity") and "$script:VaultIdentity" in fn("Get-AgentIdentity"),
         "the agent's identity is not read from ssm-cli.exe or its vault")
    need(re.search(r"if \(\$fileId -ne \$agentId\) \{.*?Remove-Item -LiteralPath \$file", main_text, re.DOTALL) is not None,
         "a registration file the agent's identity disagrees with is not removed before registering afresh")
    failed = fn("Stop-FailedRegistration")
    need("$script:RegistrationFile" in failed and "Remove-Item" in failed and "Write-Output ('refused: {0}'" in failed
         and "Get-RefusalCode" in failed and "UNREGISTERED" in failed,
         "a failed registration does not remove the stale file, say the machine is unregistered and print 'refused: <Code>'")
    need("Registration failed due to .*AWS SSM" in fn("Get-RefusalCode"), "the refusal's code is not read from the agent's output")
    need(main_text.count("Stop-FailedRegistration -ExitCode $exitCode") == 3 and "registration with activation {0} failed" not in main_text,
         "a registration failure exits without leaving the machine visibly unregistered")
    online = fn("Wait-AgentOnline")
    need("-Path $script:WorkerLog" in online and "$workerText -match '(?m)^.*Entering SSM Agent hibernate" in online
         and "ssm-agent-worker.log" in source,
         "the worker's hibernation is not read from ssm-agent-worker.log, where the worker writes it on Windows")
    need("Retrieve credentials produced error" in online and "failed to find agent identity" in online,
         "the core agent's credential errors (no route, no identity) are not read")
    need("-TimeoutSeconds $script:RegisterTimeoutSeconds" in fn("Register-WithAgent") and "$script:RegisterTimeoutSeconds = 60" in source,
         "amazon-ssm-agent.exe -register runs without a timeout")
    signature = fn("Assert-AmazonSignature")
    need("$script:AgentSignerName = 'Amazon.com Services LLC'" in source and "-ceq $script:AgentSignerName" in signature
         and "X509NameType]::SimpleName" in signature and "O=Amazon" not in signature,
         "the signer is not checked by its exact CN 'Amazon.com Services LLC'")
    need("$exitCode -eq 3010" in fn("Install-AgentPackage"), "the installer's 3010 (success, restart needed) is taken for a failure")
    need(re.search(r"finally \{\s*Remove-Item -LiteralPath \$log", fn("Install-AgentPackage")) is not None,
         "the installer's log, which holds its command line with CODE=, outlives the installer")
    need("windows_arm64" not in fn("Get-BucketDirectory") and "no SSM Agent build for Windows on ARM64" in fn("Get-BucketDirectory"),
         "Windows on ARM64 is not told plainly that there is no agent build")
    need("[^/@\\s]*@" in fn("ConvertTo-MaskedText"), "proxy credentials in the tools' output are not masked")

    # Issue 22: reports to the service (POST /registrations), warnings only.
    report = fn("Send-RegistrationReport")
    confirm = fn("Confirm-Registration")
    refusal_report = fn("Send-RefusalReport")
    after_loop = main_text.find("} while ($script:Refused")
    report_at = main_text.find("Confirm-Registration -Uri $reportUri -InstanceId $registered")
    need(0 <= after_loop < report_at < main_text.find("$instanceId = Confirm-AgentOnline", after_loop)
         and "$registered = Get-RegisteredInstanceId" in main_text,
         "the registration is not reported (Confirm-Registration once registered, before the online wait)")
    need("'/registrations'" in fn("Get-RegistrationsUri") and "'?pool='" in fn("Get-RegistrationsUri")
         and "$reportUri = Get-RegistrationsUri -BaseUrl $settings.Url -PoolName $settings.Pool" in main_text,
         "the report does not go to /registrations with the vend's pool query")
    need("$request = Get-ServiceRequestArgument -Uri $Uri -JsonBody $json " in report
         and re.search(r"Invoke-RestMethod @request -TimeoutSec", report) is not None
         and "$headers['X-Machine-Id'] = $script:MachineId" in request
         and re.search(r"\$request\['Method'\] = 'Post'\s+\$request\['Body'\] = \$JsonBody\s+"
                       r"\$request\['ContentType'\] = 'application/json'", request) is not None
         and "ConvertTo-Json -InputObject $Body" in report,
         "the report is not a JSON POST with X-Machine-Id (through the proxy)")
    need("InstanceId = $InstanceId; ActivationId = $ActivationId" in confirm and "$body['Instance'] = $InstanceName" in confirm
         and "$InstanceId -cnotmatch '^mi-[0-9a-f]{17}\\z'" in confirm and "$ActivationId -notmatch $script:ActivationIdPattern" in confirm
         and "ActivationId = $ActivationId; Error = $Refusal" in refusal_report,
         "the confirmation does not name the instance, or a report's values are not checked before they go into it")
    for name, body in (("Send-RegistrationReport", report), ("Confirm-Registration", confirm), ("Send-RefusalReport", refusal_report)):
        need(re.search(r"Stop-Bootstrap|\bexit\b|\bthrow\b", body) is None and body != "",
             f"{name}: a failed report fails the boot (it must be a warning)")
        need(SECRET_NAMES.search(body) is None, f"{name}: a report carries the activation code")
    need(re.search(r"^\s*\} catch \{\s*\$lastError = \$_\.Exception\.Message", report, re.MULTILINE) is not None
         and "'WARNING: {0} ({1})'" in report,
         "Send-RegistrationReport: a failed report fails the boot (it must be a warning)")
    wait = re.search(r"^\$script:ReportWaitSeconds = (\d+)$", source, re.MULTILINE)
    need(wait is not None and int(wait.group(1)) <= 10 and "$script:ReportWaitSeconds - [int]$clock.Elapsed.TotalSeconds" in report,
         "the report's retries are not bounded to a few seconds")
    need("-InstanceName $settings.Instance\n" in main_text and "freshSlot" not in main_text,
         "-Force (or a stale registration file) vends without the instance name, which cannot be confirmed")
    need("$script:HealableRefusals = @('InvalidActivation', 'ActivationExpired', 'RegistrationLimitExceeded')" in source
         and "$script:HealableRefusals -contains $refusal" in failed,
         "the refusals the service can heal (InvalidActivation, ActivationExpired, RegistrationLimitExceeded) are not told apart")
    need(re.search(r"\$script:RefusalRetry = \$false\s+\$script:Refused = \$refusal", failed) is not None
         and "$script:RefusalRetry -and" in failed,
         "a refusal is retried more than once")
    loop_at = main_text.find("    do {")
    need(0 <= loop_at < main_text.find("Send-RefusalReport -Uri $reportUri -ActivationId $activationId -Refusal $script:Refused")
         < main_text.find("$response = Get-VendedActivation", loop_at),
         "a refusal is not reported before the vend is asked for again")
    need("} while ($script:Refused -and $vends -lt 2)" in main_text and "-and -not $script:Refused" in main_text,
         "a refusal the service can heal is not followed by exactly one more vend and registration")

    # Issue 9.8: -Instance says what it does.
    help_block = re.search(r"\.PARAMETER Instance\n(.*?)\n\n", source, re.DOTALL)
    need(help_block is not None and "vending service knows this server by" in help_block.group(1)
         and "not the\nserver's name in SSM" in help_block.group(1),
         "-Instance's help does not say it is the name the vending service knows the server by, not its SSM name")
    return findings


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "patterns":
        import json

        source = Path(argv[1]).read_text(encoding="utf-8")
        print(json.dumps(param_patterns(source)))
        return 0
    if len(argv) < 2 or argv[0] not in ("parse", "lint", "contract"):
        print(__doc__, file=sys.stderr)
        return 2
    check = {"parse": syntax_errors, "lint": lint, "contract": contract}[argv[0]]
    status = 0
    for name in argv[1:]:
        path = Path(name)
        try:
            findings = check(path)
        except OSError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 2
        for finding in findings:
            print(finding)
        if findings:
            status = 1
        else:
            print(f"{path}: {argv[0]} ok")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
