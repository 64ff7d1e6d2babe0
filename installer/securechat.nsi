; SecureChat's Windows installer (NSIS 3, 64-bit Unicode). Built by
; installer/build.sh:  makensis -DVERSION=x.y.z -DEXE=path -DOUT=path securechat.nsi
;
; Silent use (documented in README.md "Install on Windows"):
;   SecureChat-Setup-x.y.z.exe /S [/AUTOSTART=0|1] [/FIREWALL=0|1] [/DESKTOP=0|1] [/D=C:\path]
;     defaults when silent: AUTOSTART=0, FIREWALL=1, DESKTOP=1
;   "C:\Program Files\SecureChat\uninstall.exe" /S [/REMOVEDATA]
;     a silent uninstall keeps the user's data unless /REMOVEDATA is given;
;     an interactive one asks.

Unicode true
Target amd64-unicode
ManifestDPIAware true
SetCompressor /SOLID lzma

!ifndef VERSION
  !error "VERSION is required: makensis -DVERSION=x.y.z"
!endif
!ifndef EXE
  !error "EXE is required: the path of SecureChat.exe"
!endif
!ifndef OUT
  !define OUT "SecureChat-Setup-${VERSION}.exe"
!endif

!define APP "SecureChat"
!define AUMID "SecureChat.SecureChat"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\SecureChat"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define FIREWALL_RULE "SecureChat"

!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"
!include "x64.nsh"

Name "${APP}"
OutFile "${OUT}"
InstallDir "$PROGRAMFILES64\${APP}"
InstallDirRegKey HKLM "${UNINST_KEY}" "InstallLocation"
RequestExecutionLevel admin
BrandingText "${APP} ${VERSION}"

VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "${APP}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "${APP} installer"
VIAddVersionKey "LegalCopyright" "MIT License"

!define MUI_ICON "..\assets\securechat.ico"
!define MUI_UNICON "..\assets\securechat.ico"
!define MUI_ABORTWARNING
!define MUI_FINISHPAGE_RUN "$INSTDIR\SecureChat.exe"
!define MUI_FINISHPAGE_RUN_TEXT "Start SecureChat now"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Var OptAutostart
Var OptFirewall
Var OptDesktop

; Closes a running copy (an upgrade replaces the executable). The database
; survives a forced stop: every acknowledged message is already on disk.
!macro CloseRunning
  nsExec::Exec 'taskkill /IM SecureChat.exe /T'
  Sleep 1500
  nsExec::Exec 'taskkill /IM SecureChat.exe /T /F'
  Sleep 500
!macroend

; Gives a shortcut the application's AppUserModelID (for Windows
; notifications): IShellLink → IPersistFile::Load → IPropertyStore::SetValue
; (PKEY_AppUserModel_ID) → Commit → IPersistFile::Save.
!macro SetAumid LNK
  System::Call 'ole32::CoCreateInstance(g "{00021401-0000-0000-C000-000000000046}", p 0, i 1, g "{000214F9-0000-0000-C000-000000000046}", *p .r1) i .r0'
  ${If} $0 = 0
    System::Call '$1->0(g "{0000010b-0000-0000-C000-000000000046}", *p .r2) i .r0'
    ${If} $0 = 0
      System::Call '$2->5(w "${LNK}", i 2) i .r0'
      System::Call '$1->0(g "{886D8EEB-8CF2-4446-8D02-CDBA1DBDCF99}", *p .r3) i .r0'
      ${If} $0 = 0
        System::Call '*(g "{9F4C2855-9F79-4B39-A8D0-E1D42DE1D5F3}", i 5) p .r4'
        System::Call '*(&i2 31, &i2 0, &i2 0, &i2 0, w "${AUMID}", p 0) p .r5'
        System::Call '$3->6(p r4, p r5) i .r0'
        System::Call '$3->7() i .r0'
        System::Call '$2->6(p 0, i 1) i .r0'
        System::Free $4
        System::Free $5
        System::Call '$3->2()'
      ${EndIf}
      System::Call '$2->2()'
    ${EndIf}
    System::Call '$1->2()'
  ${EndIf}
!macroend


Section "SecureChat (required)" SecMain
  SectionIn RO
  SetShellVarContext all
  !insertmacro CloseRunning
  SetOutPath "$INSTDIR"
  File "/oname=SecureChat.exe" "${EXE}"
  File "/oname=securechat.ico" "..\assets\securechat.ico"
  File "/oname=LICENSE.txt" "..\LICENSE"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateShortcut "$SMPROGRAMS\SecureChat.lnk" "$INSTDIR\SecureChat.exe" "" "$INSTDIR\SecureChat.exe" 0
  !insertmacro SetAumid "$SMPROGRAMS\SecureChat.lnk"

  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "SecureChat"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "SecureChat"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\SecureChat.exe,0"
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegDWORD HKLM "${UNINST_KEY}" "EstimatedSize" "$0"
SectionEnd

Section "Desktop shortcut" SecDesktop
  SetShellVarContext all
  CreateShortcut "$DESKTOP\SecureChat.lnk" "$INSTDIR\SecureChat.exe" "" "$INSTDIR\SecureChat.exe" 0
SectionEnd

Section /o "Start SecureChat at login" SecAutostart
  ; The same entry as the tray's "Start at login" (this user's Run key).
  WriteRegStr HKCU "${RUN_KEY}" "SecureChat" '"$INSTDIR\SecureChat.exe"'
SectionEnd

Section "Allow SecureChat on private networks (firewall)" SecFirewall
  ; Inbound for this program on private and domain networks only, never public.
  nsExec::Exec 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  nsExec::Exec 'netsh advfirewall firewall add rule name="${FIREWALL_RULE}" dir=in action=allow program="$INSTDIR\SecureChat.exe" enable=yes profile=private,domain'
SectionEnd

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "SecureChat needs 64-bit Windows 10 or newer."
    Abort
  ${EndIf}
  SetRegView 64
  StrCpy $OptAutostart 0
  StrCpy $OptFirewall 1
  StrCpy $OptDesktop 1
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/AUTOSTART=" $R1
  ${IfNot} ${Errors}
    StrCpy $OptAutostart $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/FIREWALL=" $R1
  ${IfNot} ${Errors}
    StrCpy $OptFirewall $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/DESKTOP=" $R1
  ${IfNot} ${Errors}
    StrCpy $OptDesktop $R1
  ${EndIf}
  ; The components page starts from the switches.
  ${If} $OptAutostart == 1
    SectionSetFlags ${SecAutostart} ${SF_SELECTED}
  ${EndIf}
  ${If} $OptFirewall != 1
    SectionSetFlags ${SecFirewall} 0
  ${EndIf}
  ${If} $OptDesktop != 1
    SectionSetFlags ${SecDesktop} 0
  ${EndIf}
FunctionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecMain} "The program, a Start Menu shortcut and an entry in Apps & features."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecDesktop} "A shortcut on the desktop."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecAutostart} "Start SecureChat when you log in (the tray menu can change this later)."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecFirewall} "Let teammates on your home or work network reach SecureChat when it hosts. Public networks stay closed."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Function un.onInit
  SetRegView 64
FunctionEnd

Section "Uninstall"
  SetShellVarContext all
  !insertmacro CloseRunning
  Delete "$INSTDIR\SecureChat.exe"
  Delete "$INSTDIR\securechat.ico"
  Delete "$INSTDIR\LICENSE.txt"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  Delete "$SMPROGRAMS\SecureChat.lnk"
  Delete "$DESKTOP\SecureChat.lnk"
  nsExec::Exec 'netsh advfirewall firewall delete rule name="${FIREWALL_RULE}"'
  DeleteRegValue HKCU "${RUN_KEY}" "SecureChat"
  DeleteRegKey HKLM "${UNINST_KEY}"

  ; The user's data (encrypted database, certificates, logs) is theirs:
  ; removed only when asked.
  SetShellVarContext current
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/REMOVEDATA" $R1
  ${IfNot} ${Errors}
    RMDir /r "$APPDATA\SecureChat"
  ${ElseIfNot} ${Silent}
    IfFileExists "$APPDATA\SecureChat\*.*" 0 done
    MessageBox MB_YESNO|MB_ICONQUESTION|MB_DEFBUTTON2 "Also delete your SecureChat data (messages, accounts and certificates in $APPDATA\SecureChat)? This cannot be undone." IDNO done
    RMDir /r "$APPDATA\SecureChat"
    done:
  ${EndIf}
SectionEnd
